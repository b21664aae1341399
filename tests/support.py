"""Test harness for real-service tests: one pipeline namespace per test, real worker processes, read-backs.

Everything here talks to the real local Kafka and Redis started by ``livestream services up``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import redis
from aiokafka import AIOKafkaProducer

from agents.startup import ensure_topics
from agents.topic_reader import read_to_end
from livestream import readback
from livestream.lag import consumer_lag, partition_lag
from livestream.producer import ReplayResult, replay_fair
from stream.settings import Settings
from stream.state import ChannelState, decode_state


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class KafkaRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp: int = 0


@dataclass
class Pipeline:
    """A namespace (topics, group, Redis keys) plus the worker processes that serve it."""

    root: Path
    namespace: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    def settings(self, **more: Any) -> Settings:
        # Kafka connection settings given to the workers (e.g. SASL_SSL) apply to this process's clients too.
        kafka = {
            name.removeprefix("LIVESTREAM_").lower(): value
            for name, value in self.extra_env.items()
            if name.startswith("LIVESTREAM_KAFKA_")
        }
        return Settings(
            namespace=self.namespace,
            partitions=self.partitions,
            data_dir=self.root / "worker-0",
            **{**kafka, **more},
        )

    # Workers -------------------------------------------------------------------------------------------------
    def start_worker(self, index: int = 0, wait: bool = True, cpus: str | None = None) -> subprocess.Popen[bytes]:
        """Start worker ``index`` (its own port and data directory); ``cpus`` pins it (``taskset -c``)."""
        port = free_port()
        data_dir = self.root / f"worker-{index}"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            LIVESTREAM_NAMESPACE=self.namespace,
            LIVESTREAM_PARTITIONS=str(self.partitions),
            LIVESTREAM_WEB_PORT=str(port),
            LIVESTREAM_DATA_DIR=str(data_dir),
            **self.extra_env,
        )
        log = (self.root / f"worker-{index}.log").open("ab")
        command = [sys.executable, "-m", "livestream", "worker"]
        if cpus is not None:
            command = ["taskset", "-c", cpus, *command]
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        self.workers.append(proc)
        self.ports.append(port)
        if wait:
            wait_until(lambda: self._answers(port, proc), 120, f"worker {index} on port {port} to be ready")
        return proc

    def _answers(self, port: int, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}; log in {self.root}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/totals", timeout=2) as response:
                return bool(response.status == 200 and msgspec.json.decode(response.read())["ready"])
        except OSError:
            return False

    def stop_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.workers:
            self.stop_worker(proc)

    def worker_log(self, index: int = 0) -> str:
        path = self.root / f"worker-{index}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def get_json(self, path: str, port: int | None = None) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port or self.ports[-1]}{path}", timeout=5) as response:
            return msgspec.json.decode(response.read())

    def metrics_text(self, port: int | None = None) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port or self.ports[-1]}/metrics", timeout=5) as response:
            return str(response.read().decode())

    # Kafka ---------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        asyncio.run(ensure_topics(self.settings()))

    def replay(self, scale: float, seed: int = 7, batch: int = 1, speed: float = 0.0) -> ReplayResult:
        return asyncio.run(replay_fair(self.settings(), scale=scale, seed=seed, batch=batch, speed=speed))

    def produce_raw(self, records: list[tuple[bytes | None, bytes | None]]) -> None:
        settings = self.settings()

        async def run() -> None:
            await ensure_topics(settings)
            producer = AIOKafkaProducer(
                **settings.kafka_client_options(), enable_idempotence=True, max_request_size=8_388_608
            )
            await producer.start()
            try:
                for key, value in records:
                    await producer.send_and_wait(settings.events_topic, value, key=key)
            finally:
                await producer.stop()

        asyncio.run(run())

    def read_topic(self, topic: str, timeout: float = 30) -> list[KafkaRecord]:
        """Every record of ``topic`` from the beginning to its current end."""
        records = asyncio.run(read_to_end(self.settings().kafka_client_options(), topic, timeout_s=timeout))
        return [
            KafkaRecord(
                r.topic, r.partition, r.offset, r.key, r.value, {k: bytes(v) for k, v in r.headers}, r.timestamp
            )
            for r in records
        ]

    def table_states(self) -> dict[str, ChannelState]:
        """The channel-state table as its changelog holds it: the last value per key."""
        records = self.read_topic(f"{self.settings().app_id}-channel-state-changelog")
        latest: dict[str, ChannelState] = {}
        for record in records:
            if record.key is not None and record.value is not None:
                latest[record.key.decode()] = decode_state(record.value)
        return latest

    def lag(self) -> int:
        s = self.settings()
        return asyncio.run(consumer_lag(s.kafka_client_options(), s.app_id, s.events_topic))

    def wait_committed_to_end(self, timeout: float, what: str = "every record committed") -> None:
        """Wait until the group's committed offset of every events partition reaches the end that partition had
        when this was called (idle ticks, and their copies to the other partitions, keep appending, so with
        several workers there may be no instant when every partition's lag is 0)."""
        s = self.settings()

        def offsets() -> dict[int, tuple[int, int, int]]:
            return asyncio.run(partition_lag(s.kafka_client_options(), s.app_id, s.events_topic))

        ends = {partition: end for partition, (end, _, _) in offsets().items()}
        assert ends, f"{s.events_topic} has no partitions"
        wait_until(lambda: all(offsets()[p][1] >= end for p, end in ends.items()), timeout, what, interval=0.2)

    # Redis ---------------------------------------------------------------------------------------------------
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings().redis_url)

    def redis_campaign(self, campaign: str) -> dict[str, int]:
        return readback.read_campaign(self.redis(), self.settings().redis_prefix, campaign)

    def redis_channels(self, campaign: str) -> dict[str, dict[str, Any]]:
        return readback.read_channels(self.redis(), self.settings().redis_prefix, campaign)

    def wait_redis_summary(self, campaign: str, expected: dict[str, int], timeout: float = 180) -> None:
        last: dict[str, Any] = {}

        def matches() -> bool:
            nonlocal last
            if self.workers and all(proc.poll() is not None for proc in self.workers):
                code = self.workers[-1].returncode
                raise AssertionError(f"every worker exited (the last with {code}); log:\n{self.worker_log()[-3000:]}")
            last = readback.summary(self.redis_campaign(campaign))
            return last == expected

        try:
            wait_until(matches, timeout, f"Redis totals {expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen {last}") from None

    def cleanup_topics(self) -> None:
        """Delete the namespace's topics: a full test run would otherwise leave thousands of partitions on the
        one local broker, slowing every later test."""
        from livestream.bench.common import delete_topics

        try:
            asyncio.run(asyncio.wait_for(delete_topics(self.settings().kafka_client_options(), self.namespace), 30))
        except Exception as exc:  # a broker a test stopped: the topics go with its data
            print(f"topics of {self.namespace} not deleted: {exc!r}")

    def cleanup_redis(self) -> None:
        client = self.redis()
        keys = list(client.scan_iter(f"{self.settings().redis_prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for every sample line of a Prometheus text exposition."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def expected_campaign_windows(oracle: Any) -> dict[int, dict[str, int]]:
    """Per 1-minute window start: the sum of every livestream's window counters (one campaign) and livestreams."""
    from stream.replay.oracle import COUNTER_FIELDS

    expected: dict[int, dict[str, int]] = {}
    for (_, start), window in oracle.windows.items():
        into = expected.setdefault(start, dict.fromkeys((*COUNTER_FIELDS, "livestreams"), 0))
        for name in COUNTER_FIELDS:
            into[name] += getattr(window, name)
        into["livestreams"] += 1
    return expected


def check_campaign_windows(pipeline: Pipeline, oracle: Any, complete: bool, timeout: float = 120) -> int:
    """Campaign window records equal the oracle's sums, once each; with ``complete`` every minute is there.

    Returns the number of campaign windows checked.
    """
    from schemas.stats import CampaignWindowStats
    from stream.replay.oracle import COUNTER_FIELDS

    expected = expected_campaign_windows(oracle)
    topic = pipeline.settings().campaign_stats_topic
    if complete:
        wait_until(lambda: len(pipeline.read_topic(topic)) >= len(expected), timeout, "every campaign window")
    records = pipeline.read_topic(topic)
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)), "a campaign window was emitted twice"
    gmv = 0
    for record in records:
        assert record.value is not None
        window = msgspec.json.decode(record.value, type=CampaignWindowStats)
        want = expected[window.window_start_ms]
        got = {name: getattr(window, name) for name in (*COUNTER_FIELDS, "livestreams")}
        assert got == want, (window.window_start_ms, got, want)
        gmv += window.gmv_vnd
        assert window.gmv_to_date_vnd == gmv, "gmv_to_date must be the running sum of the windows before it"
    if complete:
        assert {msgspec.json.decode(r.value or b"", type=CampaignWindowStats).window_start_ms for r in records} == set(
            expected
        )
    return len(records)
