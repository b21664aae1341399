"""Kafka stopped while requests are in flight through the gateway.

Runs on a SEPARATE single-node Kafka on its own port (``LIVESTREAM_KAFKA_PORT=<port> deploy/local/kafka.sh``, with
its own data directory, wiped afterwards): the shared 127.0.0.1:9092 broker is never stopped.

Eight connections send a scaled fair through the gateway while the broker is stopped for a while and started
again. Clients retry every 503 and every failed request with the same events. Afterwards every event of every 200
answer is on the topic, and the worker's totals equal the oracle: events that reached Kafka more than once (a
request retried after its events were written) are counted once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest

from livestream.gateway_client import GatewaySender, SendStats, generated_minutes, send_minutes
from schemas.events import Batch
from stream.fold import TICK_HEADER
from stream.replay.oracle import Oracle
from stream.replay.profile import OCOP_FAIR, scaled
from tests.gateway_support import CAMPAIGN, TOKEN, GatewayProcess
from tests.support import Pipeline, parse_metrics

pytestmark = [pytest.mark.services, pytest.mark.slow]
KAFKA_SH = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka.sh"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def own_kafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, dict[str, str]]]:
    port = next(p for p in range(29192, 29900, 7) if _free(p) and _free(p + 1000))
    env = {**os.environ, "LIVESTREAM_KAFKA_PORT": str(port)}
    subprocess.run([str(KAFKA_SH), "start"], env=env, check=True, timeout=180)
    monkeypatch.setenv("LIVESTREAM_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    try:
        yield port, env
    finally:
        subprocess.run([str(KAFKA_SH), "wipe"], env=env, check=False, timeout=120)


class RecordingSender(GatewaySender):
    accepted: list[bytes]

    async def send(self, body: bytes, events: int) -> dict[str, object]:
        answer = await super().send(body, events)
        self.accepted.append(body)
        return answer


async def send_fair(url: str, scale: float, seed: int, seconds: float) -> tuple[Oracle, list[bytes], SendStats]:
    profile = scaled(OCOP_FAIR, scale)
    speed = (profile.end_ms - profile.start_ms) / 1000 / seconds
    oracle: list[Oracle] = []
    stats = SendStats()
    accepted: list[bytes] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:
        senders = []
        for _ in range(8):
            sender = RecordingSender(session, url, TOKEN, stats=stats, timeout_s=5, deadline_s=240)
            sender.accepted = accepted
            senders.append(sender)
        await send_minutes(generated_minutes(profile, seed, oracle), senders, batch=200, speed=speed)
    return oracle[0], accepted, stats


def test_kafka_stopped_under_load_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, own_kafka: tuple[int, dict[str, str]]
) -> None:
    port, kafka_env = own_kafka
    pipeline = Pipeline(root=tmp_path)
    assert pipeline.settings().kafka_bootstrap == f"127.0.0.1:{port}"
    pipeline.prepare()
    gateway = GatewayProcess(tmp_path, pipeline.namespace, env={"LIVESTREAM_GATEWAY_PRODUCE_TIMEOUT_S": "2"}).start()
    outcome: dict[str, object] = {}

    def client() -> None:
        try:
            outcome["result"] = asyncio.run(send_fair(gateway.url, 0.01, 21, seconds=20))
        except BaseException as exc:
            outcome["error"] = exc

    try:
        pipeline.start_worker()
        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        time.sleep(6)
        subprocess.run([str(KAFKA_SH), "stop"], env=kafka_env, check=True, timeout=60)
        time.sleep(1)
        down = parse_metrics(gateway.metrics())
        time.sleep(7)
        subprocess.run([str(KAFKA_SH), "start"], env=kafka_env, check=True, timeout=180)
        thread.join(300)
        assert not thread.is_alive(), "the clients did not finish"
        if "error" in outcome:
            raise AssertionError(f"client failed: {outcome['error']!r}\n{gateway.log()[-3000:]}")
        oracle, accepted, stats = outcome["result"]  # type: ignore[misc]
        assert stats.retries > 0, "the outage was not felt by any client"
        metrics = parse_metrics(gateway.metrics())
        unavailable = int(metrics['livestream_gateway_requests_total{code="503"}'])
        assert unavailable > 0
        assert down["livestream_gateway_in_flight_bytes"] <= 64 * 1024 * 1024

        # Every event of every 200 answer is on the topic.
        sent_ids = {
            (msgspec.json.decode(line)["channel_id"], msgspec.json.decode(line)["event_id"])
            for body in accepted
            for line in body.splitlines()
            if line
        }
        on_topic: list[tuple[str, str]] = []
        for record in pipeline.read_topic(pipeline.settings().events_topic, timeout=60):
            if TICK_HEADER in record.headers:
                continue
            assert record.value is not None
            batch = msgspec.json.decode(record.value, type=Batch)
            on_topic += [(batch.channel_id, e.event_id) for e in batch.events]
        assert sent_ids <= set(on_topic), f"{len(sent_ids - set(on_topic))} acknowledged events are missing"
        assert set(on_topic) == sent_ids
        # None counted twice, even those written twice.
        pipeline.wait_redis_summary(CAMPAIGN, oracle.summary(), timeout=180)
        channels = pipeline.redis_channels(CAMPAIGN)
        for channel_id, expected in oracle.channels.items():
            assert int(channels[channel_id]["views"]) == expected.views, channel_id
            assert int(channels[channel_id]["orders_paid"]) == expected.orders_paid, channel_id
        assert parse_metrics(gateway.metrics())["livestream_gateway_in_flight_bytes"] == 0
        print(
            f"{len(on_topic)} events on the topic for {len(sent_ids)} distinct ones; {stats.retries} retries; "
            f"{unavailable} answers 503"
        )
    finally:
        gateway.stop()
        pipeline.stop_all()
        pipeline.cleanup_redis()
