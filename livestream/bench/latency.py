"""Latency from event produced to value visible in Redis, at a fixed rate of single-event records.

The fair replay's events (in event-time order) are sent at ``rate`` events per second in 10 ms steps to a fresh
pipeline's events topic while a worker runs, each with its event time set to the moment it is sent (so windows
close once a minute per livestream, as live, not as fast as a replay runs through the fair's hours).

The events are sent by a process of their own; for every view event the wall time of its step (taken before the
step's events are handed to the producer) is reported to this process, which keeps them per livestream and polls
Redis every 10 ms (one pipelined ``HGET views`` per livestream): when a livestream's ``views`` counter rises from
``a`` to ``b`` the views ``a+1 .. b`` became visible at the poll's reply time. (With the sender in the same process,
a sender running behind its schedule starved the poller, and the poller's delay was counted as latency.)
Latencies are therefore upper bounds, by at most one poll interval plus a round trip. Views sent in the first
``WARMUP_S`` seconds (a fresh worker's first batches) are not counted.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import queue
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from agents.startup import ensure_topics
from livestream.bench.common import BenchError, log, percentile
from livestream.bench.pipeline import stop_worker, wait_ready
from livestream.processes import start_worker
from schemas.events import Event, View
from schemas.redis_keys import RedisKeys
from stream.replay.generator import FairReplay
from stream.replay.profile import OCOP_FAIR, scaled
from stream.settings import Settings

STEP_S = 0.01
POLL_S = 0.01
WARMUP_S = 2.0
"""Views sent in the first seconds (a fresh worker's first batches, connections, caches) are not counted."""
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class LatencyResult:
    rate: float
    """Events per second asked for."""
    achieved_rate: float
    """Events sent / seconds spent sending."""
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    p99_by_second: list[float]
    """p99 (ms) of the views sent in each second of the run: a rising trend means the worker fell behind."""


def fair_events(count: int, seed: int) -> list[tuple[bytes, Event, str, bool]]:
    """The first ``count`` events of a fair scaled to hold them: (key, event, channel id, is a view)."""
    scale = min(1.0, max(0.01, count / 3_400_000))
    out: list[tuple[bytes, Event, str, bool]] = []
    for minute in FairReplay(scaled(OCOP_FAIR, scale), seed).minutes():
        for channel_id, events in minute.by_channel.items():
            key = channel_id.encode()
            out.extend((key, e, channel_id, isinstance(e, View)) for e in events)
        if len(out) >= count:
            break
    return out[:count]


def _send_in_child(settings: Settings, rate: float, seconds: float, seed: int, sent: Any) -> None:
    """The load: runs in its own process, so that neither it nor the measuring poller waits for the other's CPU.

    Each 10 ms step first reports ``(wall time, livestream ids of its views)`` on ``sent``, then hands its events
    (stamped with that time) to the producer; at the end ``("done", events, seconds spent sending)``.
    """
    asyncio.run(_send(settings, rate, seconds, seed, sent))


async def _send(settings: Settings, rate: float, seconds: float, seed: int, sent: Any) -> None:
    records = fair_events(int(rate * seconds), seed)
    producer = AIOKafkaProducer(
        **settings.kafka_client_options(),
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        compression_type="lz4",
    )
    await producer.start()
    try:
        pending = []
        done = 0
        started = time.monotonic()
        for step in itertools.count(1):
            due = min(len(records), int(rate * STEP_S * step))
            now_s = time.time()
            now_ms = int(now_s * 1000)
            step_records = records[done:due]
            sent.put((now_s, [channel_id for _, _, channel_id, is_view in step_records if is_view]))
            for key, event, _, _ in step_records:
                value = _encode(msgspec.structs.replace(event, ts_ms=now_ms))
                pending.append(await producer.send(settings.events_topic, value, key=key))
            done = due
            if done >= len(records):
                break
            delay = started + STEP_S * step - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        send_seconds = time.monotonic() - started
        await asyncio.gather(*pending)
        sent.put(("done", len(records), send_seconds))
    finally:
        await producer.stop()


async def _run(settings: Settings, rate: float, seconds: float, seed: int) -> LatencyResult:
    """Start the sender process and poll Redis until every view it sent is visible (wall-clock times)."""
    keys = RedisKeys(settings.redis_prefix)
    sent_at: dict[str, list[float]] = {}
    seen: dict[str, int] = {}
    latencies: list[tuple[float, float]] = []
    """(sent at, latency) in seconds."""
    finished: tuple[int, float] | None = None
    context = multiprocessing.get_context("spawn")
    sent = context.Queue()
    sender = context.Process(target=_send_in_child, args=(settings, rate, seconds, seed, sent), daemon=True)
    client = aioredis.Redis.from_url(settings.redis_url)
    started = time.time()
    sender.start()

    def take_reports(block_s: float = 0.0) -> None:
        nonlocal finished
        while True:
            try:
                item = sent.get(timeout=block_s) if block_s else sent.get_nowait()
            except queue.Empty:
                return
            block_s = 0.0
            if item[0] == "done":
                finished = (item[1], item[2])
                continue
            at, channel_ids = item
            for channel_id in channel_ids:
                sent_at.setdefault(channel_id, []).append(at)
                seen.setdefault(channel_id, 0)

    try:
        deadline = time.monotonic() + seconds + 180
        while time.monotonic() < deadline:
            take_reports()
            channels = list(sent_at)
            pipe = client.pipeline(transaction=False)
            for channel_id in channels:
                pipe.hget(keys.channel(channel_id), "views")
            values = await pipe.execute() if channels else []
            now = time.time()
            for channel_id, value in zip(channels, values, strict=True):
                views = int(value) if value is not None else 0
                start = seen[channel_id]
                if views > start:
                    times = sent_at[channel_id]
                    if views > len(times):  # its report is still in the queue's pipe
                        take_reports(block_s=1.0)
                        if views > len(times):
                            raise BenchError(f"{channel_id}: Redis shows {views} views, {len(times)} were sent")
                    latencies.extend((t, now - t) for t in times[start:views])
                    seen[channel_id] = views
            if finished is not None and all(seen[c] == len(sent_at[c]) for c in sent_at):
                break
            if finished is None and not sender.is_alive():
                take_reports()
                if finished is None:
                    raise BenchError(f"the latency sender exited with {sender.exitcode}")
            await asyncio.sleep(POLL_S)
        else:
            raise BenchError("views still missing from Redis 180 s after sending")
    finally:
        await client.aclose()
        sender.join(30)
        if sender.is_alive():
            sender.kill()
    assert finished is not None
    if not latencies:
        raise BenchError("no view became visible in Redis")
    latencies = [(at, x) for at, x in latencies if at - started >= WARMUP_S]
    if not latencies:
        raise BenchError(f"no view sent after the {WARMUP_S:.0f} s warm-up became visible in Redis")
    ms = [x * 1000 for _, x in latencies]
    by_second: dict[int, list[float]] = {}
    for at, latency in latencies:
        by_second.setdefault(int(at - started), []).append(latency * 1000)
    events, send_seconds = finished
    return LatencyResult(
        rate,
        events / send_seconds,
        len(ms),
        percentile(ms, 50),
        percentile(ms, 99),
        max(ms),
        [percentile(by_second[s], 99) for s in sorted(by_second)],
    )


def measure_latency(settings: Settings, rate: float, seconds: float, seed: int = 11) -> LatencyResult:
    """Start a worker on a fresh namespace, send the fair at ``rate`` events/s for ``seconds``, time views to Redis."""
    asyncio.run(ensure_topics(settings))
    log_path = settings.data_dir.parent / "latency-worker.log"
    proc = start_worker(settings, log_path)
    try:
        wait_ready(settings.web_port, proc, log_path)
        log(f"latency: sending {int(rate * seconds):,} single-event records at {rate:,.0f}/s")
        result = asyncio.run(_run(settings, rate, seconds, seed))
        if proc.poll() is not None:
            raise BenchError(f"worker exited with {proc.returncode}; log {log_path}")
        return result
    finally:
        stop_worker(proc)
