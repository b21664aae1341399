"""Redis loses every key of the namespace in the middle of a fair (as after a restart without its files, or a
FLUSHALL): the worker notices within a loss check and writes everything it holds again, so the fair's totals and
every livestream's counters come out exact, and Prometheus says a rebuild happened."""

from __future__ import annotations

import pytest

from stream.state import COUNTER_FIELDS
from tests.chaos.test_failures import FAST_IDLE, BackgroundReplay
from tests.support import Pipeline, parse_metrics, wait_until

SEED = 31
CAMPAIGN = "ocop-bac-giang-2023"


@pytest.mark.slow
def test_redis_losing_every_key_mid_fair_is_written_again_exact(pipeline: Pipeline) -> None:
    pipeline.extra_env.update(FAST_IDLE)
    pipeline.start_worker()
    replay = BackgroundReplay(pipeline, SEED, batch=1)
    replay.at(0.5)
    client = pipeline.redis()
    wait_until(lambda: bool(pipeline.redis_campaign(CAMPAIGN)["views"]), 30, "the first half of the fair in Redis")
    pipeline.cleanup_redis()  # every key of the namespace, the mirror's marker among them (the next flush may
    # write some back at once: what matters is that everything comes back, checked below)
    result = replay.join()

    pipeline.wait_redis_summary(CAMPAIGN, result.oracle.summary(), timeout=120)
    channels = pipeline.redis_channels(CAMPAIGN)
    assert set(channels) == set(result.oracle.channels)
    for channel_id, expected in result.oracle.channels.items():
        for name in COUNTER_FIELDS:
            assert channels[channel_id][name] == getattr(expected, name), (channel_id, name)
    metrics = parse_metrics(pipeline.metrics_text())
    assert metrics["livestream_redis_rebuilds_total"] >= 1
    assert "lost this worker's keys" in pipeline.worker_log()
    assert client.ping()
