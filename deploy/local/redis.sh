#!/usr/bin/env bash
# Local Redis on 127.0.0.1 for runs and tests: installs Debian's redis-server if missing, starts one if none answers.
#
#   deploy/local/redis.sh start|stop|status
#
# Environment: LIVESTREAM_REDIS_PORT (default 6379), LIVESTREAM_CACHE_DIR (default <repo>/.cache).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
port="${LIVESTREAM_REDIS_PORT:-6379}"
cache="${LIVESTREAM_CACHE_DIR:-$repo/.cache}"
run="$cache/redis/run-$port"

log() { echo "[redis:$port] $*" >&2; }
answers() { command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]; }

install() {
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then return 0; fi
  log "installing redis-server with apt"
  "$here/apt-install.sh" redis-server
}

start() {
  install
  if answers; then log "already answering"; return 0; fi
  mkdir -p "$run"
  # Append-only file: a restarted Redis comes back with what it had (the mirror then only writes what it missed).
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$run" --save "" --appendonly yes \
    --pidfile "$run/redis.pid" --logfile "$run/redis.log" --protected-mode no
  local deadline=$((SECONDS + 20))
  until answers; do
    if [ $SECONDS -ge $deadline ]; then log "did not answer within 20 s"; tail -20 "$run/redis.log" >&2; exit 1; fi
    sleep 0.1
  done
  log "up on 127.0.0.1:$port"
}

stop() {
  if answers; then redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true; fi
  local deadline=$((SECONDS + 10))
  while answers && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  log "stopped"
}

status() { if answers; then echo "redis 127.0.0.1:$port up"; else echo "redis 127.0.0.1:$port down"; return 1; fi; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  install) install ;;
  *) echo "usage: $0 start|stop|restart|status|install" >&2; exit 2 ;;
esac
