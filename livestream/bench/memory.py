"""Resident memory of a pipeline worker holding ``n`` active livestreams.

A fresh namespace gets ``n`` distinct livestreams, each with a view and a comment (single-event records, event
time now, so every livestream has an open window and none is idle yet). A fresh worker folds them; once
``/api/totals`` shows all ``n`` livestreams and ``2 n`` events and Redis lists all ``n`` livestreams (the mirror
has written them), the worker's ``VmRSS`` is read, after a short settle. ``VmHWM`` (its peak) is kept as well.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import msgspec
import redis
from aiokafka import AIOKafkaProducer

from agents.startup import ensure_topics
from livestream.bench.common import BenchError, rss_mb
from livestream.bench.pipeline import api_totals, stop_worker, wait_ready
from livestream.processes import start_worker
from schemas.events import Comment, View
from schemas.redis_keys import RedisKeys
from stream.settings import Settings

CAMPAIGN = "bench-memory"
EVENTS_PER_LIVESTREAM = 2
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class MemoryResult:
    livestreams: int
    rss_mb: float
    peak_mb: float
    idle_mb: float
    """RSS of the same worker, ready, before any event."""


def livestream_records(n: int, now_ms: int) -> list[tuple[bytes, bytes]]:
    """``n`` livestreams, a view and a comment each: (key, value) per single-event record."""
    records: list[tuple[bytes, bytes]] = []
    for i in range(n):
        channel_id = f"mem-{i:06d}"
        creator, user = f"creator-{i % 1000:03d}", f"user-{i}"
        view = View(
            event_id=f"{channel_id}-v",
            channel_id=channel_id,
            creator_id=creator,
            campaign=CAMPAIGN,
            user_id=user,
            ts_ms=now_ms,
        )
        comment = Comment(
            event_id=f"{channel_id}-c",
            channel_id=channel_id,
            creator_id=creator,
            campaign=CAMPAIGN,
            user_id=user,
            ts_ms=now_ms + 1,
            text="hi",
        )
        key = channel_id.encode()
        records.append((key, _encode(view)))
        records.append((key, _encode(comment)))
    return records


async def _produce(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        **settings.kafka_client_options(),
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=1_048_576,
        compression_type="lz4",
    )
    await producer.start()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(settings.events_topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def measure_memory(settings: Settings, n: int, *, settle_s: float = 2.0, timeout: float = 600) -> MemoryResult:
    asyncio.run(ensure_topics(settings))
    log_path = settings.data_dir.parent / f"memory-{n}-worker.log"
    proc = start_worker(settings, log_path)
    try:
        wait_ready(settings.web_port, proc, log_path)
        idle = rss_mb(proc.pid)
        asyncio.run(_produce(settings, livestream_records(n, int(time.time() * 1000))))
        client = redis.Redis.from_url(settings.redis_url)
        channels_key = RedisKeys(settings.redis_prefix).campaign(CAMPAIGN, "channels")
        deadline = time.monotonic() + timeout
        totals: dict[str, object] | None = None
        while True:
            if proc.poll() is not None:
                raise BenchError(f"worker exited with {proc.returncode}; log {log_path}")
            totals = api_totals(settings.web_port, timeout=30)
            if (
                totals is not None
                and totals["livestreams"] == n
                and totals["events_processed"] == EVENTS_PER_LIVESTREAM * n
                and client.scard(channels_key) == n
            ):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"memory {n}: worker did not fold all livestreams in {timeout:.0f} s: {totals}")
            time.sleep(0.5)
        time.sleep(settle_s)
        return MemoryResult(n, rss_mb(proc.pid), rss_mb(proc.pid, "VmHWM"), idle)
    finally:
        stop_worker(proc)
