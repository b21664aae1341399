"""Kafka with SASL_SSL (SCRAM-SHA-512 over TLS): a second local broker on a port of its own, certificates made here.

The fair goes through a worker whose every Kafka client (faust's, the startup checks, the read-backs, the replay
producer, the lag reader) uses the secured listener, and the Redis totals equal the oracle. Wrong credentials end
``livestream`` with a clear error and exit code 3 within seconds, for a command and for the worker.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream.replay.oracle import COUNTER_FIELDS
from tests.support import Pipeline, free_port
from tests.tls_material import make_broker_tls

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"
CAMPAIGN = "ocop-bac-giang-2023"
USER = "livestream-worker"


@dataclass(frozen=True)
class SecuredKafka:
    port: int
    ca_pem: Path
    password_file: Path

    def env(self, password_file: Path | None = None) -> dict[str, str]:
        return {
            "LIVESTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{self.port}",
            "LIVESTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "LIVESTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "LIVESTREAM_KAFKA_SASL_USERNAME": USER,
            "LIVESTREAM_KAFKA_SASL_PASSWORD_FILE": str(password_file or self.password_file),
            "LIVESTREAM_KAFKA_SSL_CAFILE": str(self.ca_pem),
        }


def _port_pair() -> int:
    """A free client port whose controller port (port + 1000) is free too, away from the shared 9092."""
    for _ in range(50):
        port = free_port()
        if port + 1000 > 65535 or port in (9092, 10092):
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1000))
            except OSError:
                continue
        return port
    raise AssertionError("no free port pair for the SASL_SSL broker")


@pytest.fixture(scope="module")
def secured_kafka(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    folder = tmp_path_factory.mktemp("sasl-kafka")
    store_password = secrets.token_hex(12)
    tls = make_broker_tls(folder / "tls", store_password)
    password_file = folder / "scram-password"
    password_file.write_text(secrets.token_urlsafe(18))
    password_file.chmod(0o600)
    port = _port_pair()
    env = dict(os.environ)
    env.update(
        LIVESTREAM_KAFKA_PORT=str(port),
        KAFKA_HEAP="384m",
        LIVESTREAM_KAFKA_SASL_SSL="1",
        LIVESTREAM_KAFKA_KEYSTORE=str(tls.keystore),
        LIVESTREAM_KAFKA_TRUSTSTORE=str(tls.truststore),
        LIVESTREAM_KAFKA_STORE_PASSWORD=store_password,
        LIVESTREAM_KAFKA_SCRAM_USER=USER,
        LIVESTREAM_KAFKA_SCRAM_PASSWORD_FILE=str(password_file),
    )
    subprocess.run([str(KAFKA_SH), "wipe"], env=env, check=True, capture_output=True)
    try:
        started = subprocess.run([str(KAFKA_SH), "start"], env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        yield SecuredKafka(port, tls.ca_pem, password_file)
    finally:
        subprocess.run([str(KAFKA_SH), "wipe"], env=env, capture_output=True, timeout=60)
        cache = Path(os.environ.get("LIVESTREAM_CACHE_DIR", REPO / ".cache"))
        shutil.rmtree(cache / "kafka" / f"run-{port}", ignore_errors=True)  # its config held the test passwords


def test_fair_through_sasl_ssl_is_exact(secured_kafka: SecuredKafka, tmp_path: Path) -> None:
    pipeline = Pipeline(root=tmp_path, extra_env=secured_kafka.env())
    settings = pipeline.settings()
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_bootstrap == f"127.0.0.1:{secured_kafka.port}"
    try:
        pipeline.prepare()
        pipeline.start_worker()
        oracle = pipeline.replay(scale=0.01, seed=23, batch=1).oracle
        pipeline.wait_redis_summary(CAMPAIGN, oracle.summary())
        pipeline.wait_committed_to_end(60, "the worker to commit every record over SASL_SSL")
        channels = pipeline.redis_channels(CAMPAIGN)
        assert set(channels) == set(oracle.channels)
        for channel_id, expected in oracle.channels.items():
            for name in COUNTER_FIELDS:
                assert channels[channel_id][name] == getattr(expected, name), (channel_id, name)
        # The worker's output topics are on the secured broker (read back over SASL_SSL too).
        assert pipeline.read_topic(settings.stats_1m_topic), "no final windows on the secured broker"
    finally:
        pipeline.stop_all()
        pipeline.cleanup_redis()


def _run_with_wrong_password(secured_kafka: SecuredKafka, tmp_path: Path, *args: str) -> tuple[int, str, float]:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    env = dict(os.environ)
    env.update(secured_kafka.env(password_file=wrong))
    env.update(LIVESTREAM_DATA_DIR=str(tmp_path / "state"), LIVESTREAM_WEB_PORT=str(free_port()))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "livestream", "--namespace", "wrongcreds", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return result.returncode, result.stderr, time.monotonic() - started


@pytest.mark.parametrize("command", [("worker",), ("dlq", "inspect", "--json")], ids=["worker", "dlq-inspect"])
def test_wrong_credentials_fail_fast_and_clearly(
    secured_kafka: SecuredKafka, tmp_path: Path, command: tuple[str, ...]
) -> None:
    code, stderr, seconds = _run_with_wrong_password(secured_kafka, tmp_path, *command)
    assert code == 3, stderr[-2000:]
    assert seconds < 30, f"took {seconds:.1f} s"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("livestream: cannot connect to Kafka (SASL_SSL"), stderr[-2000:]
    assert "SaslAuthenticationFailed" in last and USER in last, last
