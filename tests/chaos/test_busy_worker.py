"""A busy worker is never taken for a dead one: pinned to one core beside a busy process, fed the largest envelope
the schema allows and then a backlog of thousands of envelopes, it neither exits nor restarts, and the counts are
exact."""

from __future__ import annotations

import subprocess
import sys
import time

import msgspec
import pytest

from schemas.events import MAX_BATCH_EVENTS, Event
from stream.replay.oracle import COUNTER_FIELDS, Oracle
from tests.chaos.test_failures import CAMPAIGN, FAST_IDLE
from tests.support import Pipeline, wait_until

BIG_CHANNEL = "big-envelope-0"
BIG_CAMPAIGN = "big-envelope-campaign"
BUSY_LOOP = "while True: pass"


def _big_envelope() -> tuple[bytes, list[dict[str, object]]]:
    start = 1_687_572_000_000  # the fair's day: 2023-06-24 02:00 UTC
    events: list[dict[str, object]] = [
        {
            "type": "view" if i % 10 else "like",
            "event_id": f"big-{i:06d}",
            "channel_id": BIG_CHANNEL,
            "creator_id": "big-creator",
            "campaign": BIG_CAMPAIGN,
            "user_id": f"viewer-{i % 4000:05d}",
            "ts_ms": start + i * 25,  # 10,000 events over about 4 minutes
        }
        for i in range(MAX_BATCH_EVENTS)
    ]
    return msgspec.json.encode({"type": "batch", "channel_id": BIG_CHANNEL, "events": events}), events


@pytest.mark.slow
def test_a_pinned_worker_beside_a_busy_process_takes_the_largest_envelope_and_a_backlog(pipeline: Pipeline) -> None:
    pipeline.extra_env.update(FAST_IDLE)
    value, events = _big_envelope()
    pipeline.produce_raw([(BIG_CHANNEL.encode(), value)])
    result = pipeline.replay(scale=0.3, seed=41, batch=500)  # over 2,000 envelopes of up to 500 events, a backlog
    assert result.records > 2000
    busy = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", BUSY_LOOP])
    try:
        worker = pipeline.start_worker(cpus="0")
        started = time.monotonic()
        pipeline.wait_redis_summary(CAMPAIGN, result.oracle.summary(), timeout=600)
        caught_up_s = time.monotonic() - started
        big = Oracle.from_events(msgspec.convert(e, type=Event) for e in events).channels[BIG_CHANNEL]
        wait_until(
            lambda: all(
                pipeline.redis_channels(BIG_CAMPAIGN).get(BIG_CHANNEL, {}).get(n) == getattr(big, n)
                for n in COUNTER_FIELDS
            ),
            120,
            "the largest envelope counted exactly",
        )
        channels = pipeline.redis_channels(CAMPAIGN)
        for channel_id, expected in result.oracle.channels.items():
            for name in COUNTER_FIELDS:
                assert channels[channel_id][name] == getattr(expected, name), (channel_id, name)
        pipeline.wait_committed_to_end(120, "every offset committed")
        assert worker.poll() is None, f"the worker exited with {worker.returncode}"
        log = pipeline.worker_log(0)
        assert "stood still" not in log and "processing loop failed" not in log, log[-4000:]
        assert len(pipeline.workers) == 1
        print(f"caught up in {caught_up_s:.1f} s on one shared core")
    finally:
        busy.kill()
        busy.wait(10)
