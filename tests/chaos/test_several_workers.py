"""Several workers in one consumer group, on single-event records and on envelopes: rebalances while a paced
replay runs (a worker killed -9, one added, one stopped with SIGTERM), and workers starting together on a filled
topic. Every counter, final window, campaign window and alert record equals the oracle, each once; the group's
committed offsets reach the end of every partition; no worker's processing loop crashed.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import threading
import time

import pytest

from agents.freeze import EXIT_FROZEN
from tests.chaos.test_failures import FAST_IDLE, SCALE, BackgroundReplay, assert_exact
from tests.support import Pipeline, parse_metrics, wait_until

CRASH_SIGNS = (
    "processing loop failed",
    "bulk drain loop raised",
    "Drain messages raised",
    "KeyError",
    "Partition is not assigned",
    "fencing revoked partitions",
)


def assert_no_crash(pipeline: Pipeline) -> None:
    for index in range(len(pipeline.workers)):
        log = pipeline.worker_log(index)
        for sign in CRASH_SIGNS:
            assert sign not in log, f"worker {index} log shows {sign!r}:\n{log[-4000:]}"


def assert_committed_to_the_end(pipeline: Pipeline) -> None:
    """The group's committed offset of every events partition reaches its end (idle ticks keep appending, so
    this is seen between two ticks)."""
    pipeline.wait_committed_to_end(90, "committed offsets at the end of every partition")


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 50], ids=["single-events", "envelopes"])
def test_three_workers_one_killed_one_added_one_stopped(pipeline: Pipeline, batch: int) -> None:
    pipeline.extra_env.update(FAST_IDLE)
    for index in range(3):
        pipeline.start_worker(index=index)
    replay = BackgroundReplay(pipeline, seed=31, batch=batch)
    replay.at(0.25)
    pipeline.stop_worker(pipeline.workers[0], signal.SIGKILL)
    replay.at(0.45)
    started = time.monotonic()
    pipeline.start_worker(index=3)
    joined_s = time.monotonic() - started
    replay.at(0.65)
    started = time.monotonic()
    pipeline.stop_worker(pipeline.workers[1], signal.SIGTERM)
    stopped_s = time.monotonic() - started
    result = replay.join()
    done = time.monotonic()
    assert_exact(pipeline, result.oracle, seed=31, scale=SCALE)
    print(
        f"batch {batch}: join ready in {joined_s:.1f} s, SIGTERM stop {stopped_s:.1f} s, exact "
        f"{time.monotonic() - done:.1f} s after the replay"
    )
    assert_committed_to_the_end(pipeline)
    assert_no_crash(pipeline)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 500], ids=["single-events", "envelopes"])
def test_three_workers_starting_together_on_a_filled_topic(pipeline: Pipeline, batch: int) -> None:
    pipeline.extra_env.update(FAST_IDLE)
    result = pipeline.replay(scale=SCALE, seed=33, batch=batch)
    for index in range(3):
        pipeline.start_worker(index=index, wait=False)
    assert_exact(pipeline, result.oracle, seed=33, scale=SCALE)
    assert_committed_to_the_end(pipeline)
    assert_no_crash(pipeline)
    # Each partition starts at its committed offset (0 for a new group): nothing fetched during table recovery
    # is skipped and read again as a gap.
    for index in range(3):
        log = pipeline.worker_log(index)
        assert "offset gap" not in log, f"worker {index} skipped records at its start:\n{log[-4000:]}"


@pytest.mark.slow
def test_two_producers_with_different_partitioners_two_workers(pipeline: Pipeline) -> None:
    """Half the records placed by murmur2 (aiokafka, the Java client), half by another partitioner (crc32, as
    librdkafka's ``consistent``): misplaced records are forwarded to their livestream's partition; every counter
    is exact and the misplacement is counted."""
    import asyncio
    import zlib

    import msgspec
    from aiokafka import AIOKafkaProducer

    from stream.replay.generator import FairReplay
    from stream.replay.profile import OCOP_FAIR, scaled
    from tests.chaos.test_failures import CAMPAIGN
    from tests.support import parse_metrics

    pipeline.extra_env.update(FAST_IDLE)
    for index in range(2):
        pipeline.start_worker(index=index)
    replay = FairReplay(scaled(OCOP_FAIR, 0.003), 41)
    events = list(replay.iter_events())
    settings = pipeline.settings()

    async def produce() -> None:
        producer = AIOKafkaProducer(**settings.kafka_client_options(), linger_ms=5)
        await producer.start()
        try:
            for i, event in enumerate(events):
                key = event.channel_id.encode()
                other = zlib.crc32(key) % settings.partitions if i % 2 else None
                await producer.send(settings.events_topic, msgspec.json.encode(event), key=key, partition=other)
        finally:
            await producer.stop()

    asyncio.run(produce())
    oracle = replay.oracle
    pipeline.wait_redis_summary(CAMPAIGN, oracle.summary(), timeout=180)
    channels = pipeline.redis_channels(CAMPAIGN)
    for channel_id, expected in oracle.channels.items():
        assert channels[channel_id]["views"] == expected.views, channel_id
        assert channels[channel_id]["gmv_vnd"] == expected.gmv_vnd, channel_id
    misrouted = sum(
        parse_metrics(pipeline.metrics_text(port)).get("livestream_misrouted_records_total", 0.0)
        for port in pipeline.ports
    )
    assert misrouted > 0, "the crc32 placement must differ from murmur2 for some livestreams"
    assert_committed_to_the_end(pipeline)
    assert_no_crash(pipeline)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 50], ids=["single-events", "envelopes"])
def test_a_worker_paused_past_its_session_timeout_comes_back(pipeline: Pipeline, batch: int) -> None:
    """A worker frozen (SIGSTOP: a VM pause, a stuck host) for longer than the session timeout loses its partitions
    to the other worker while it still holds a batch in progress; when it runs again it must not publish or save
    anything of that batch, nor write stale counters to Redis."""
    pipeline.extra_env.update(FAST_IDLE)
    for index in range(2):
        pipeline.start_worker(index=index)
    replay = BackgroundReplay(pipeline, seed=35, batch=batch)
    replay.at(0.35)
    paused = pipeline.workers[0]
    paused.send_signal(signal.SIGSTOP)
    try:
        time.sleep(15)  # the session timeout is 10 s
    finally:
        paused.send_signal(signal.SIGCONT)
    # It fences itself: exits at once, its local tables discarded; its supervisor starts it again.
    assert paused.wait(30) == EXIT_FROZEN
    assert "stood still" in pipeline.worker_log(0)
    pipeline.start_worker(index=0)
    result = replay.join()
    assert_exact(pipeline, result.oracle, seed=35, scale=SCALE)
    assert_committed_to_the_end(pipeline)
    assert_no_crash(pipeline)


@pytest.mark.slow
def test_a_scraped_workers_counters_never_go_down_across_rebalances(pipeline: Pipeline) -> None:
    """Worker 0 is scraped every 200 ms while a second worker joins (its partitions are revoked, some come back)
    and leaves again: every counter it serves only grows (what ``rate()`` and ``increase()`` expect), and once it
    owns every partition again its owned gauges are the fair's totals."""
    pipeline.extra_env.update(FAST_IDLE)
    pipeline.start_worker(index=0)
    port = pipeline.ports[0]
    samples: list[dict[str, float]] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                samples.append(parse_metrics(pipeline.metrics_text(port)))
            time.sleep(0.2)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        replay = BackgroundReplay(pipeline, seed=35, batch=1)
        replay.at(0.3)
        pipeline.start_worker(index=1)
        replay.at(0.7)
        pipeline.stop_worker(pipeline.workers[1], signal.SIGTERM)
        result = replay.join()
        assert_exact(pipeline, result.oracle, seed=35, scale=SCALE)
    finally:
        stop.set()
        scraper.join(10)
    summary = result.oracle.summary()
    wait_until(
        lambda: parse_metrics(pipeline.metrics_text(port)).get("livestream_owned_views") == summary["views"],
        60,
        "worker 0's owned views equal to the fair's",
    )
    assert len(samples) > 20
    counters = sorted({name for sample in samples for name in sample if "_total" in name})
    assert "livestream_views_total" in counters and "livestream_gmv_vnd_total" in counters
    for earlier, later in itertools.pairwise(samples):
        went_down = [n for n in counters if later.get(n, 0.0) < earlier.get(n, 0.0)]
        assert not went_down, f"counters went down between two scrapes: {went_down}"
    last = samples[-1]
    assert 0 < last["livestream_views_total"] <= summary["views"], "what worker 0 applied itself, no more"
