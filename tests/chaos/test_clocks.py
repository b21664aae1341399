"""One clock for every record and every tick: the events topic stamps records with the broker's append time, so a
producer whose clock runs behind cannot make live livestreams look idle, and a tick record crafted by a producer
with a time an hour ahead cannot close windows early. Both at once, on a paced replay with a short idle timeout:
every window, counter and alert exactly as the oracle and the pure core say."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from aiokafka import AIOKafkaProducer

from livestream.producer import ReplayResult, produce_replay
from stream.fold import TICK_HEADER, encode_tick
from stream.replay.generator import FairReplay
from stream.replay.profile import OCOP_FAIR, scaled
from tests.chaos.test_failures import FAIR_MINUTES, FAST_IDLE, PACE_SECONDS, SCALE, assert_exact
from tests.support import Pipeline

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
