"""A scaled fair through a real worker on real Kafka and Redis: tables, Redis and /metrics equal the oracle."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec
import pytest

from schemas.events import View
from schemas.stats import WindowStats
from stream.replay.oracle import COUNTER_FIELDS
from tests.support import Pipeline, check_campaign_windows, parse_metrics, wait_until

CAMPAIGN = "ocop-bac-giang-2023"


@pytest.mark.parametrize(("scale", "batch"), [(0.01, 1), (0.03, 200)], ids=["single-events", "batch-envelopes"])
def test_scaled_fair_is_exact_everywhere(pipeline: Pipeline, scale: float, batch: int) -> None:
    pipeline.start_worker()
    result = pipeline.replay(scale=scale, seed=11, batch=batch)
    oracle = result.oracle
    pipeline.wait_redis_summary(CAMPAIGN, oracle.summary())
    pipeline.wait_committed_to_end(60, "the worker to commit every record")

    # Redis: every counter of every livestream, and the campaign.
    channels = pipeline.redis_channels(CAMPAIGN)
    assert set(channels) == set(oracle.channels)
    for channel_id, expected in oracle.channels.items():
        got = channels[channel_id]
        for name in COUNTER_FIELDS:
            assert got[name] == getattr(expected, name), (channel_id, name)
        assert got["peak_concurrent_viewers"] == expected.peak_concurrent
        assert got["concurrent_viewers"] == max(0, expected.concurrent)
        assert set(str(got["creators"]).split(",")) == set(expected.creators)
        # HyperLogLog: 0.81% standard error; allow 3 sigma.
        assert abs(got["unique_viewers"] - expected.unique_viewers) <= max(3, 0.025 * expected.unique_viewers)
    campaign = pipeline.redis_campaign(CAMPAIGN)
    assert campaign["livestreams"] == 26 and campaign["creators"] == 40
    assert abs(campaign["unique_viewers"] - oracle.unique_viewers) <= 0.025 * oracle.unique_viewers

    # The RocksDB-backed table, as its changelog holds it.
    wait_until(lambda: set(pipeline.table_states()) == set(oracle.channels), 30, "changelog of every channel")
    states = pipeline.table_states()
    for channel_id, expected in oracle.channels.items():
        totals = states[channel_id].totals.as_dict()
        assert totals == {name: getattr(expected, name) for name in COUNTER_FIELDS}, channel_id

    # /metrics: fair totals and the bounded per-livestream series.
    samples = parse_metrics(pipeline.metrics_text())
    summary = oracle.summary()
    assert samples["livestream_views_total"] == summary["views"]
    assert samples["livestream_orders_paid_total"] == summary["orders"]
    assert samples["livestream_gmv_vnd_total"] == summary["gmv_vnd"]
    assert samples["livestream_livestreams"] == 26
    assert samples["livestream_creators"] == 40
    per_channel = {k: v for k, v in samples.items() if k.startswith("livestream_channel_gmv_vnd{")}
    assert len(per_channel) == 20 + 1  # top K (default 20) plus "other"
    assert sum(per_channel.values()) == summary["gmv_vnd"]
    top = max(oracle.channels.values(), key=lambda c: c.gmv_vnd)
    top_id = next(cid for cid, c in oracle.channels.items() if c is top)
    assert samples[f'livestream_channel_gmv_vnd{{channel="{top_id}"}}'] == top.gmv_vnd

    # Final window records: one per closed (livestream, minute), equal to the oracle's window counters.
    stats = pipeline.read_topic(pipeline.settings().stats_1m_topic)
    decoded = [msgspec.json.decode(r.value, type=WindowStats) for r in stats if r.value]
    assert decoded, "windows closed during the replay must have been emitted"
    for window in decoded:
        expected_window = oracle.windows[(window.channel_id, window.window_start_ms)]
        for name in COUNTER_FIELDS:
            assert getattr(window, name) == getattr(expected_window, name), (window.channel_id, name)
        assert window.final and window.window_end_ms - window.window_start_ms == 60_000
    keys = [r.key for r in stats]
    assert len(keys) == len(set(keys)), "a final window was emitted twice"

    # Campaign windows: every minute of the fair, each the sum of its livestreams' windows, once.
    assert check_campaign_windows(pipeline, oracle, complete=True) > 0
    assert parse_metrics(pipeline.metrics_text())["livestream_campaign_windows_ignored_total"] == 0


def test_garbage_goes_to_dead_letters_and_the_worker_keeps_counting(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    first = pipeline.replay(scale=0.002, seed=5, batch=20)
    pipeline.produce_raw([(b"ocop-live-01", b"garbage{"), (b"ocop-live-02", None), (b"ocop-live-03", b'{"type":"x"}')])
    # Good events after the garbage are still counted.
    start = first.oracle.channels["ocop-live-01"].last_ts_ms
    after = [
        View(
            event_id=f"after-{i}",
            channel_id="ocop-live-01",
            creator_id="creator-01",
            campaign=CAMPAIGN,
            user_id=f"late-viewer-{i}",
            ts_ms=start + i,
        )
        for i in range(10)
    ]
    pipeline.produce_raw([(b"ocop-live-01", msgspec.json.encode(event)) for event in after])
    expected = dict(first.oracle.summary())
    expected["views"] += len(after)
    pipeline.wait_redis_summary(CAMPAIGN, expected)

    # The operators' CLI reads the same numbers back from Redis.
    cli = subprocess.run(
        [sys.executable, "-m", "livestream", "--namespace", pipeline.namespace, "stats", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    totals = json.loads(cli.stdout)[CAMPAIGN]["totals"]
    assert (totals["views"], totals["orders_paid"], totals["gmv_vnd"]) == (
        expected["views"],
        expected["orders"],
        expected["gmv_vnd"],
    )

    dead = pipeline.read_topic(pipeline.settings().dlq_topic)
    assert [r.headers["error"] for r in dead] == [b"bad_json", b"null_value", b"unknown_type"]
    for record in dead:
        assert record.headers["source_topic"] == pipeline.settings().events_topic.encode()
        assert int(record.headers["source_offset"]) >= 0
        assert record.headers["error_message"]
    samples = parse_metrics(pipeline.metrics_text())
    assert samples['livestream_dlq_records_total{reason="bad_json"}'] == 1
    assert samples['livestream_dlq_records_total{reason="null_value"}'] == 1
    assert samples['livestream_dlq_records_total{reason="unknown_type"}'] == 1
    pipeline.wait_committed_to_end(60, "offsets to advance past the garbage")


def test_dead_letters_can_be_inspected_and_replayed(pipeline: Pipeline) -> None:
    import asyncio

    from livestream.dlq import read_dead_letters, replay_dead_letters

    pipeline.start_worker()
    pipeline.produce_raw([(b"ocop-live-01", b"{broken"), (b"ocop-live-01", b'{"type":"view","v":9}')])
    settings = pipeline.settings()
    wait_until(lambda: len(pipeline.read_topic(settings.dlq_topic)) == 2, 60, "two dead letters")
    letters = asyncio.run(read_dead_letters(settings.kafka_client_options(), settings.dlq_topic))
    assert [d.headers["error"] for d in letters] == ["bad_json", "unsupported_version"]
    only = asyncio.run(read_dead_letters(settings.kafka_client_options(), settings.dlq_topic, reason="bad_json"))
    assert [d.value for d in only] == [b"{broken"]
    # Replayed unchanged, they are still invalid: back in the dead-letter topic, nothing counted.
    assert asyncio.run(replay_dead_letters(settings.kafka_client_options(), letters, settings.events_topic)) == 2
    wait_until(lambda: len(pipeline.read_topic(settings.dlq_topic)) == 4, 60, "the replayed records rejected again")
    assert pipeline.get_json("/api/totals")["views"] == 0


def test_the_partition_count_comes_from_the_events_topic(pipeline: Pipeline) -> None:
    """An events topic with fewer partitions than LIVESTREAM_PARTITIONS: the worker follows the topic (homes,
    tables, outputs) instead of sending to partitions that do not exist, and the counts are exact."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    pipeline.cleanup_topics()  # the fixture's topics: start from none
    pipeline.namespace += "p3"
    settings = pipeline.settings()

    async def create() -> None:
        admin = AIOKafkaAdminClient(**settings.kafka_client_options())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(settings.events_topic, 3, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    assert pipeline.partitions == 4
    pipeline.start_worker()
    result = pipeline.replay(scale=0.005, seed=12, batch=1)
    pipeline.wait_redis_summary(CAMPAIGN, result.oracle.summary())
    pipeline.wait_committed_to_end(60, "the worker to commit every record")
    log = pipeline.worker_log(0)
    assert "has 3 partitions, LIVESTREAM_PARTITIONS is 4: using the topic's 3" in log
    assert "misrouted" not in log and "forwarded" not in log, "murmur2 placement on 3 partitions is home"
