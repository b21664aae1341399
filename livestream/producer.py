"""Produces the fair replay to ``<namespace>.events``, keyed by ``channel_id``.

Events go out minute by minute in event-time order; within a minute each livestream's events stay in order
(one partition per livestream keeps them in order in Kafka). ``batch > 1`` packs up to that many events of one
livestream into a batch envelope per record. ``speed`` 0 means as fast as possible, N means N times real time.
The producer is idempotent (``enable_idempotence``), so its own retries never duplicate a record.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import msgspec
from aiokafka import AIOKafkaProducer

from agents.startup import ensure_topics
from schemas.events import Batch
from stream.replay.generator import FairReplay, MinuteSlice
from stream.replay.oracle import Oracle
from stream.replay.profile import OCOP_FAIR, scaled
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


async def produce_replay(
    replay: Replay,
    bootstrap: str,
    topic: str,
    *,
    batch: int = 1,
    speed: float = 0.0,
    on_minute: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Send the whole replay; returns its oracle (complete once sent) and what was sent."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=1_048_576,
        max_request_size=8_388_608,
        compression_type="lz4",
    )
    await producer.start()
    started = time.monotonic()
    records = events = 0
    pending: list[asyncio.Future[object]] = []
    first_minute: int | None = None
    try:
        for minute in replay.minutes():
            if first_minute is None:
                first_minute = minute.start_ms
            if speed > 0:
                due = started + (minute.start_ms - first_minute) / 1000 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            for channel_id, channel_events in minute.by_channel.items():
                key = channel_id.encode()
                if batch > 1:
                    for i in range(0, len(channel_events), batch):
                        chunk = channel_events[i : i + batch]
                        value = _encode(Batch(channel_id=channel_id, events=chunk))
                        pending.append(await producer.send(topic, value, key=key))
                        records += 1
                else:
                    for event in channel_events:
                        pending.append(await producer.send(topic, _encode(event), key=key))
                        records += 1
                events += len(channel_events)
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                pending.clear()
            if on_minute is not None:
                on_minute(minute.start_ms, events)
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    return ReplayResult(oracle=replay.oracle, records=records, events=events, seconds=time.monotonic() - started)


async def replay_fair(
    settings: Settings, *, scale: float, seed: int, batch: int, speed: float = 0.0, progress: bool = False
) -> ReplayResult:
    """Create the topics if needed and produce the (scaled) OCOP fair to the settings' events topic."""
    profile = scaled(OCOP_FAIR, scale) if scale != 1.0 else OCOP_FAIR
    minutes = (profile.end_ms - profile.start_ms) // 60_000
    await ensure_topics(settings)
    return await produce_replay(
        FairReplay(profile, seed),
        settings.kafka_bootstrap,
        settings.events_topic,
        batch=batch,
        speed=speed,
        on_minute=progress_printer(minutes) if progress else None,
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
