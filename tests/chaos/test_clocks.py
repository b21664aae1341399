"""One clock for every record and every tick: the events topic stamps records with the broker's append time, so a
producer whose clock runs behind cannot make live livestreams look idle, and a tick record crafted by a producer
with a time an hour ahead cannot close windows early. Both at once, on a paced replay with a short idle timeout:
every window, counter and alert exactly as the oracle and the pure core say."""

from __future__ import annotations

import asyncio
import threading
import time

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from livestream.producer import ReplayResult, produce_replay
from schemas.events import View
from schemas.stats import WindowStats
from stream.fold import TICK_HEADER, encode_tick
from stream.replay.generator import FairReplay
from stream.replay.oracle import Oracle
from stream.replay.profile import OCOP_FAIR, scaled
from tests.chaos.test_failures import FAIR_MINUTES, FAST_IDLE, PACE_SECONDS, SCALE, assert_exact
from tests.support import Pipeline, wait_until

SEED = 27
HOUR_MS = 3_600_000


async def _crafted_ticks(pipeline: Pipeline, stop: threading.Event) -> int:
    settings = pipeline.settings()
    producer = AIOKafkaProducer(**settings.kafka_client_options())
    await producer.start()
    sent = 0
    try:
        while not stop.is_set():
            future = int(time.time() * 1000) + HOUR_MS
            for partition in range(pipeline.partitions):
                await producer.send_and_wait(
                    settings.events_topic,
                    encode_tick(future, -1),
                    key=b"not-a-worker",
                    partition=partition,
                    timestamp_ms=future,
                    headers=[(TICK_HEADER, b"1")],
                )
                sent += 1
            await asyncio.sleep(0.5)
    finally:
        await producer.stop()
    return sent


@pytest.mark.slow
def test_a_producer_clock_40_s_behind_and_crafted_future_ticks_change_nothing(pipeline: Pipeline) -> None:
    pipeline.extra_env.update(FAST_IDLE)  # idle after 15 s: a 40 s clock skew would close every open window
    pipeline.start_worker()
    settings = pipeline.settings()
    stop = threading.Event()
    crafted: list[int] = []
    ticker = threading.Thread(target=lambda: crafted.append(asyncio.run(_crafted_ticks(pipeline, stop))))
    ticker.start()
    try:
        result: ReplayResult = asyncio.run(
            produce_replay(
                FairReplay(scaled(OCOP_FAIR, SCALE), SEED),
                settings.kafka_client_options(),
                settings.events_topic,
                speed=FAIR_MINUTES * 60 / PACE_SECONDS,
                clock_skew_ms=-40_000,
            )
        )
    finally:
        stop.set()
        ticker.join(30)
    assert crafted and crafted[0] > 0
    assert_exact(pipeline, result.oracle, SEED)


def _view(channel_id: str, n: int, ts_ms: int) -> tuple[bytes, bytes]:
    event = View(
        event_id=f"{channel_id}-v{n}",
        channel_id=channel_id,
        creator_id="host",
        campaign=AHEAD_CAMPAIGN,
        user_id=f"u{n}",
        ts_ms=ts_ms,
    )
    return channel_id.encode(), msgspec.json.encode(event)


AHEAD_CAMPAIGN = "clock-ahead"


@pytest.mark.slow
def test_one_event_30_minutes_ahead_makes_no_other_event_of_its_livestream_late(pipeline: Pipeline) -> None:
    """Live-timed views of one livestream, then one stamped 30 minutes ahead of the wall clock (accepted: under
    ``max_future_s``), then more views at the wall clock for a few seconds: the event ahead moves the livestream's
    watermark no further than the record's append time plus ``max_clock_lead_s``, so none of the views after it is
    late; after the idle close every 1-minute window (the one 30 minutes ahead too) equals the oracle's."""
    pipeline.extra_env.update(FAST_IDLE)
    pipeline.start_worker()
    settings = pipeline.settings()
    channel = "live-ahead"
    events: list[tuple[bytes, bytes]] = []
    now = int(time.time() * 1000)
    events += [_view(channel, n, now - 3_000 + n * 100) for n in range(20)]
    events.append(_view(channel, 20, now + 30 * 60_000))
    pipeline.produce_raw(events)
    sent = len(events)
    for _ in range(6):  # views at the wall clock, after the event ahead was processed
        time.sleep(1.0)
        batch = [_view(channel, sent + i, int(time.time() * 1000)) for i in range(5)]
        pipeline.produce_raw(batch)
        events += batch
        sent += len(batch)
    oracle = Oracle.from_events(msgspec.json.decode(value, type=View) for _, value in events)

    pipeline.wait_redis_summary(AHEAD_CAMPAIGN, oracle.summary(), timeout=60)
    assert pipeline.redis_channels(AHEAD_CAMPAIGN)[channel]["views"] == sent
    wait_until(  # the idle close (15 s of silence) emits the open windows, the one ahead among them
        lambda: len(pipeline.read_topic(settings.stats_1m_topic)) >= len(oracle.windows), 90, "every 1-minute window"
    )
    minute = [msgspec.json.decode(r.value, type=WindowStats) for r in pipeline.read_topic(settings.stats_1m_topic)]
    assert {(w.channel_id, w.window_start_ms): w.views for w in minute} == {
        key: window.views for key, window in oracle.windows.items()
    }
    assert pipeline.read_topic(settings.late_topic) == [], "no view after the event ahead is late"
