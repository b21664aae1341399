"""Produces the fair replay to ``<namespace>.events``, keyed by ``channel_id``.

Events go out minute by minute in event-time order; within a minute each livestream's events stay in order
(one partition per livestream keeps them in order in Kafka). ``batch > 1`` packs up to that many events of one
livestream into a batch envelope per record. ``speed`` 0 means as fast as possible, N means N times real time.
The producer is idempotent (``enable_idempotence``), so its own retries never duplicate a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from queue import Full
from typing import Any, Final, Protocol

import msgspec
from aiokafka import AIOKafkaProducer

from agents.startup import ensure_topics
from schemas.events import Batch
from stream.replay.generator import FairReplay, MinuteSlice
from stream.replay.oracle import Oracle
from stream.replay.profile import OCOP_FAIR, FairProfile, scaled
from stream.settings import Settings

_encode = msgspec.json.Encoder().encode


class Replay(Protocol):
    """What can be produced: minute slices in time order, and the oracle of what they held."""

    def minutes(self) -> Iterator[MinuteSlice]: ...

    @property
    def oracle(self) -> Oracle: ...


@dataclass(frozen=True)
class ReplayResult:
    oracle: Oracle
    records: int
    events: int
    seconds: float


PARTITIONERS: Final = ("murmur2", "crc32")
"""How the replay places records: ``murmur2`` (the Java client's, aiokafka's and the pipeline's own; each record
on its livestream's home partition) or ``crc32`` (librdkafka's default ``consistent_random`` for keyed records, as
kcat, confluent-kafka-python and the Go and .NET clients place them; the worker forwards most of them)."""


async def _placement(producer: AIOKafkaProducer, topic: str, partitioner: str) -> Callable[[bytes], int] | None:
    """The partition of a key under ``partitioner`` (None: the producer's own murmur2)."""
    if partitioner == "murmur2":
        return None
    if partitioner != "crc32":
        raise ValueError(f"unknown partitioner {partitioner!r}: one of {', '.join(PARTITIONERS)}")
    count = len(await producer.partitions_for(topic))
    return lambda key: zlib.crc32(key) % count


EncodedMinute = tuple[int, list[tuple[bytes, bytes]], int]
"""One fair minute ready to send: its start, its (key, value) records in order, and how many events they hold."""


def encode_minutes(replay: Replay, batch: int) -> Iterator[EncodedMinute]:
    """The replay's minutes as Kafka records: single events, or envelopes of up to ``batch`` events."""
    for minute in replay.minutes():
        records: list[tuple[bytes, bytes]] = []
        events = 0
        for channel_id, channel_events in minute.by_channel.items():
            key = channel_id.encode()
            if batch > 1:
                for i in range(0, len(channel_events), batch):
                    records.append((key, _encode(Batch(channel_id=channel_id, events=channel_events[i : i + batch]))))
            else:
                records.extend((key, _encode(event)) for event in channel_events)
            events += len(channel_events)
        yield minute.start_ms, records, events


def _generate_in_child(profile: FairProfile, seed: int, batch: int, queue: Any) -> None:
    """Child process: generate and encode the fair minute by minute into ``queue``, then its oracle."""
    replay = FairReplay(profile, seed)
    for item in encode_minutes(replay, batch):
        queue.put(item)
    queue.put(replay.oracle)


async def produce_replay(
    replay: Replay,
    kafka: Mapping[str, Any],
    topic: str,
    *,
    batch: int = 1,
    speed: float = 0.0,
    on_minute: Callable[[int, int], None] | None = None,
    clock_skew_ms: int = 0,
) -> ReplayResult:
    """Send the whole replay (generated in this process); returns its oracle and what was sent. ``clock_skew_ms``
    stamps each record with the sending time plus that much, as a producer whose clock is off would."""

    async def minutes() -> AsyncIterator[EncodedMinute]:
        for item in encode_minutes(replay, batch):
            yield item

    result = await _produce(minutes(), kafka, topic, speed=speed, on_minute=on_minute, clock_skew_ms=clock_skew_ms)
    return ReplayResult(oracle=replay.oracle, records=result[0], events=result[1], seconds=result[2])


async def produce_generated_fair(
    profile: FairProfile,
    seed: int,
    kafka: Mapping[str, Any],
    topic: str,
    *,
    batch: int = 1,
    speed: float = 0.0,
    on_minute: Callable[[int, int], None] | None = None,
    partitioner: str = "murmur2",
) -> ReplayResult:
    """Send the fair of ``(profile, seed)``, generated and encoded in a child process while this one sends, so
    generation and sending use two cores. Same records, in the same order, as :func:`produce_replay`."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue(maxsize=64)
    child = context.Process(target=_generate_in_child, args=(profile, seed, batch, queue), daemon=True)
    child.start()
    loop = asyncio.get_running_loop()
    oracle: list[Oracle] = []

    async def minutes() -> AsyncIterator[EncodedMinute]:
        while True:
            item = await loop.run_in_executor(None, queue.get)
            if item is None:  # stopped (see below)
                return
            if isinstance(item, Oracle):
                oracle.append(item)
                return
            yield item

    finished = False
    try:
        records, events, seconds = await _produce(
            minutes(), kafka, topic, speed=speed, on_minute=on_minute, partitioner=partitioner
        )
        finished = True
    finally:
        if not finished:  # stopped or failed: end the generator now, and free a thread still waiting for it
            child.kill()
            with contextlib.suppress(Full):
                queue.put_nowait(None)
        child.join(30)
        if child.is_alive():
            child.kill()
    if child.exitcode != 0 or not oracle:
        raise RuntimeError(f"replay generator process failed (exit code {child.exitcode})")
    return ReplayResult(oracle=oracle[0], records=records, events=events, seconds=seconds)


async def _produce(
    minutes: AsyncIterator[EncodedMinute],
    kafka: Mapping[str, Any],
    topic: str,
    *,
    speed: float,
    on_minute: Callable[[int, int], None] | None,
    clock_skew_ms: int = 0,
    partitioner: str = "murmur2",
) -> tuple[int, int, float]:
    """Send every record, minute by minute (``speed`` N: N times real time; 0: as fast as possible), placed by
    ``partitioner`` (:data:`PARTITIONERS`)."""
    producer = AIOKafkaProducer(
        **kafka,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=1_048_576,
        max_request_size=8_388_608,
        compression_type="lz4",
    )
    await producer.start()
    place = await _placement(producer, topic, partitioner)
    started = time.monotonic()
    records = events = 0
    pending: list[asyncio.Future[object]] = []
    first_minute: int | None = None
    try:
        async for start_ms, minute_records, minute_events in minutes:
            if first_minute is None:
                first_minute = start_ms
            if speed > 0:
                due = started + (start_ms - first_minute) / 1000 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            stamp = int(time.time() * 1000) + clock_skew_ms if clock_skew_ms else None
            for key, value in minute_records:
                partition = place(key) if place is not None else None
                pending.append(await producer.send(topic, value, key=key, partition=partition, timestamp_ms=stamp))
            records += len(minute_records)
            events += minute_events
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                pending.clear()
            if on_minute is not None:
                on_minute(start_ms, events)
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    return records, events, time.monotonic() - started


async def replay_fair(
    settings: Settings,
    *,
    scale: float,
    seed: int,
    batch: int,
    speed: float = 0.0,
    progress: bool = False,
    partitioner: str = "murmur2",
) -> ReplayResult:
    """Create the topics if needed and produce the (scaled) OCOP fair to the settings' events topic."""
    profile = scaled(OCOP_FAIR, scale) if scale != 1.0 else OCOP_FAIR
    minutes = (profile.end_ms - profile.start_ms) // 60_000
    await ensure_topics(settings)
    return await produce_generated_fair(
        profile,
        seed,
        settings.kafka_client_options(),
        settings.events_topic,
        batch=batch,
        speed=speed,
        on_minute=progress_printer(minutes) if progress else None,
        partitioner=partitioner,
    )


def progress_printer(total_minutes: int) -> Callable[[int, int], None]:
    """A progress callback: a rich progress bar on a terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        return lambda _minute, _events: None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} min"),
        TextColumn("{task.fields[events]:,} events"),
        TimeElapsedColumn(),
        transient=True,
    )
    task = progress.add_task("replay", total=total_minutes, events=0)
    progress.start()

    def on_minute(_minute: int, events: int) -> None:
        progress.update(task, advance=1, events=events)
        if progress.tasks[0].completed >= total_minutes:
            progress.stop()

    return on_minute
