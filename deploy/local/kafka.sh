#!/usr/bin/env bash
# Single-node Apache Kafka 4.x (KRaft, broker+controller in one JVM) on 127.0.0.1, for local runs and tests.
#
#   deploy/local/kafka.sh fetch|start|stop|status|restart|wipe
#
# Environment:
#   LIVESTREAM_KAFKA_PORT   client port (default 9092); the controller listens on port+1000
#   LIVESTREAM_CACHE_DIR    where jars and data live (default <repo>/.cache)
#   KAFKA_HEAP              JVM heap (default 768m)
# A SASL_SSL broker instead of PLAINTEXT (clients: SCRAM-SHA-512 or -256 over TLS; the controller listener stays
# PLAINTEXT on 127.0.0.1), e.g. for the secured-Kafka test, on a port of its own:
#   LIVESTREAM_KAFKA_SASL_SSL=1
#   LIVESTREAM_KAFKA_KEYSTORE           PKCS12 keystore: the broker's key and certificate (for 127.0.0.1)
#   LIVESTREAM_KAFKA_TRUSTSTORE         PKCS12 truststore holding the CA that signed it (inter-broker client)
#   LIVESTREAM_KAFKA_STORE_PASSWORD     password of both stores
#   LIVESTREAM_KAFKA_SCRAM_USER         SCRAM user created when the storage is formatted (also inter-broker)
#   LIVESTREAM_KAFKA_SCRAM_PASSWORD_FILE  file holding its password
# The SCRAM user is written at format time: after changing it, `wipe` the broker's data first.
# The jars come from Maven Central through deploy/local/pom.xml and are cached; data lives under
# $LIVESTREAM_CACHE_DIR/kafka/data-<port> and survives stop/start (wipe removes it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
port="${LIVESTREAM_KAFKA_PORT:-9092}"
controller_port=$((port + 1000))
cache="${LIVESTREAM_CACHE_DIR:-$repo/.cache}"
libs="$cache/kafka/libs"
data="$cache/kafka/data-$port"
run="$cache/kafka/run-$port"
pidfile="$run/kafka.pid"
log="$run/kafka.log"
cluster_id="bGl2ZXN0cmVhbS1sb2NhbA"   # fixed: a local single-node cluster
sasl_ssl="${LIVESTREAM_KAFKA_SASL_SSL:-0}"

log() { echo "[kafka:$port] $*" >&2; }

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

fetch() {
  command -v java >/dev/null || "$here/apt-install.sh" openjdk-17-jre-headless
  if [ -f "$libs/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || "$here/apt-install.sh" maven
  log "fetching Kafka jars from Maven Central into $libs"
  mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -Dkafka.lib.dir="$libs"
  touch "$libs/.complete"
}

is_running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

scram_password() {
  local file="${LIVESTREAM_KAFKA_SCRAM_PASSWORD_FILE:?LIVESTREAM_KAFKA_SCRAM_PASSWORD_FILE is required with LIVESTREAM_KAFKA_SASL_SSL=1}"
  tr -d '\r\n' < "$file"
}

listener_config() {
  if [ "$sasl_ssl" != "1" ]; then
    cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
PROPS
    return 0
  fi
  local user="${LIVESTREAM_KAFKA_SCRAM_USER:?LIVESTREAM_KAFKA_SCRAM_USER is required with LIVESTREAM_KAFKA_SASL_SSL=1}"
  local store_password="${LIVESTREAM_KAFKA_STORE_PASSWORD:?LIVESTREAM_KAFKA_STORE_PASSWORD is required}"
  cat <<PROPS
listeners=SASL_SSL://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=SASL_SSL://127.0.0.1:$port
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$user" password="$(scram_password)";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$user" password="$(scram_password)";
ssl.keystore.type=PKCS12
ssl.keystore.location=${LIVESTREAM_KAFKA_KEYSTORE:?LIVESTREAM_KAFKA_KEYSTORE is required}
ssl.keystore.password=$store_password
ssl.key.password=$store_password
ssl.truststore.type=PKCS12
ssl.truststore.location=${LIVESTREAM_KAFKA_TRUSTSTORE:?LIVESTREAM_KAFKA_TRUSTSTORE is required}
ssl.truststore.password=$store_password
ssl.client.auth=none
PROPS
}

write_config() {
  mkdir -p "$run" "$data"
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
controller.listener.names=CONTROLLER
$(listener_config)
log.dirs=$data
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=268435456
log.cleaner.backoff.ms=1000
message.max.bytes=10485760
delete.topic.enable=true
PROPS
  chmod 600 "$run/server.properties"   # may hold store and SCRAM passwords
  cat > "$run/log4j2.yaml" <<'YAML'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
YAML
}

java_args() {
  JAVA_ARGS=(java -Xms256m "-Xmx${KAFKA_HEAP:-768m}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$run/log4j2.yaml" -cp "$libs/*")
}

start() {
  if answers; then log "already answering on 127.0.0.1:$port"; return 0; fi
  fetch
  write_config
  java_args
  if [ ! -f "$data/meta.properties" ]; then
    log "formatting storage in $data"
    local scram=()
    if [ "$sasl_ssl" = "1" ]; then
      local user="$LIVESTREAM_KAFKA_SCRAM_USER" secret; secret="$(scram_password)"
      scram=(--add-scram "SCRAM-SHA-512=[name=$user,password=$secret]" --add-scram "SCRAM-SHA-256=[name=$user,password=$secret]")
    fi
    "${JAVA_ARGS[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$run/server.properties" --ignore-formatted "${scram[@]}" >"$run/format.log" 2>&1 \
      || { cat "$run/format.log" >&2; exit 1; }
  fi
  log "starting broker (log: $log)"
  ( exec setsid nohup "${JAVA_ARGS[@]}" kafka.Kafka "$run/server.properties" ) >"$log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  local deadline=$((SECONDS + 60))
  until answers; do
    if ! is_running; then log "broker exited; last lines of $log:"; tail -20 "$log" >&2; exit 1; fi
    if [ $SECONDS -ge $deadline ]; then log "did not answer within 60 s"; tail -20 "$log" >&2; exit 1; fi
    sleep 0.2
  done
  log "up on 127.0.0.1:$port"
}

stop() {
  if ! is_running; then log "not running"; rm -f "$pidfile"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then log "forcing stop"; kill -KILL "$pid" 2>/dev/null || true; fi
    sleep 0.2
  done
  rm -f "$pidfile"
  log "stopped"
}

status() {
  if answers; then echo "kafka 127.0.0.1:$port up"; else echo "kafka 127.0.0.1:$port down"; return 1; fi
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  wipe) stop; rm -rf "$data"; log "data removed" ;;
  *) echo "usage: $0 fetch|start|stop|restart|status|wipe" >&2; exit 2 ;;
esac
