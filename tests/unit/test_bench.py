"""The benchmark's pure parts: percentiles, exactness checks, targets, the final JSON line (no services)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from livestream.bench.common import (
    BenchError,
    ChildResult,
    PartitionTally,
    Throughput,
    WorkerHealth,
    check_exact,
    parse_worker_metrics,
    percentile,
)
from livestream.bench.memory import livestream_records
from livestream.bench.report import APPENDED_KEYS, REQUIRED_KEYS, final_line, table, targets
from livestream.bench.scaling import ScalingSample, scaling_throughput
from livestream.bench.takeover import Poll, Takeover, settled, takeover_times
from stream.decode import Decoded, TimeBounds, decode_record


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7
    assert percentile([3.0, 1.0, 2.0], 50) == 2  # order of the input does not matter


def test_percentile_rejects_empty_input_and_bad_q() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 101)


def test_throughput_leaves_out_nothing_it_was_not_given() -> None:
    result = Throughput(events=1_000_000, seconds=4.0, cpu_s=3.0, total_events=1_002_000)
    assert result.eps == 250_000
    assert result.cpu_s_per_m == 3.0
    assert math.isnan(Throughput(0, 0.0, 0.0, 0).cpu_s_per_m)


def test_tally_is_done_when_every_partition_reached_its_end() -> None:
    tally = PartitionTally({0: 3, 1: 0, 2: 2})
    assert not tally.done
    tally.add(0, 3, 2)
    assert not tally.done
    tally.add(2, 2, 1)
    assert tally.done
    assert tally.as_json() == ({"0": 3, "1": 0, "2": 2}, {"0": 2, "1": -1, "2": 1})


def _child(counts: dict[str, int], highest: dict[str, int]) -> ChildResult:
    return ChildResult(events=5, seconds=1.0, cpu_s=1.0, total_events=5, counts=counts, highest=highest)


def test_check_exact_accepts_every_record_once() -> None:
    check_exact("c", _child({"0": 3, "1": 2}, {"0": 2, "1": 11}), {0: 0, 1: 10}, {0: 3, 1: 12})


@pytest.mark.parametrize(
    ("counts", "highest"),
    [
        ({"0": 4, "1": 2}, {"0": 2, "1": 11}),  # a record counted twice
        ({"0": 2, "1": 2}, {"0": 2, "1": 11}),  # a record missed
        ({"0": 3, "1": 2}, {"0": 1, "1": 11}),  # did not reach the end
    ],
)
def test_check_exact_fails_loudly_on_a_miscount(counts: dict[str, int], highest: dict[str, int]) -> None:
    with pytest.raises(BenchError):
        check_exact("c", _child(counts, highest), {0: 0, 1: 10}, {0: 3, 1: 12})


def test_final_line_has_every_required_key_first_and_nulls_for_missing() -> None:
    figures = {"pipeline_batch_eps": 123_456.789, "latency_p99_ms": math.nan, "extra_cpu_s_per_m": 1.234}
    line = final_line(figures)
    assert "\n" not in line
    data = json.loads(line)
    assert list(data)[: len(REQUIRED_KEYS)] == list(REQUIRED_KEYS)
    assert set(data) == {*REQUIRED_KEYS, "extra_cpu_s_per_m", *APPENDED_KEYS}
    assert data["pipeline_batch_eps"] == 123_456.79
    assert data["latency_p99_ms"] is None
    assert data["rss_mb_100k"] is None


def test_required_keys_are_the_issues() -> None:
    assert set(REQUIRED_KEYS) == {
        "faust_passthrough_eps",
        "pipeline_single_eps",
        "pipeline_batch_eps",
        "quix_window_eps",
        "aiokafka_drain_eps",
        "latency_p50_ms",
        "latency_p99_ms",
        "rss_mb_1k",
        "rss_mb_10k",
        "rss_mb_100k",
        "fair_replay_seconds",
    }


def test_targets_are_ratios_of_the_same_run() -> None:
    figures = {
        "faust_passthrough_eps": 10_000.0,
        "pipeline_single_eps": 62_000.0,
        "pipeline_batch_eps": 160_000.0,
        "quix_window_eps": 100_000.0,
        "latency_p50_ms": 100.0,
        "latency_p99_ms": 251.0,
        "rss_mb_100k": 300.0,
        "fair_replay_seconds": None,
        "gateway_eps": 49_000.0,
        "gateway_p99_ms": 50.0,
        "pipeline_crc32_eps": 43_000.0,
    }
    verdicts = {t.name: t.met for t in targets(figures)}
    assert verdicts == {
        "pipeline single / quixstreams window": False,  # 0.62 < 3
        "pipeline single events/s per worker": True,
        "pipeline single / faust pass-through": True,  # 6.2 >= 0.9
        "pipeline CRC32-placed / single (murmur2)": False,  # 0.69 < 0.7
        "pipeline batch events/s per worker": True,
        "pipeline batch / quixstreams window": True,  # 1.6 >= 1.5
        "p50 event -> Redis at 50% single rate (ms)": True,
        "p99 event -> Redis at 50% single rate (ms)": False,
        "RSS at 100k active livestreams (MB)": True,
        "full fair replay wall (s)": None,
        "events/s through one gateway": False,
        "gateway request p99 at 50% rate (ms)": True,
    }
    assert "MISSED" in table(figures)
    assert "not measured" in table(figures)


def test_memory_records_are_valid_events_of_distinct_livestreams() -> None:
    records = livestream_records(50, now_ms=1_700_000_000_000)
    assert len(records) == 100
    assert len({key for key, _ in records}) == 50
    bounds = TimeBounds(0, 2_000_000_000_000)
    for key, value in records:
        decoded = decode_record(key, value, bounds)
        assert isinstance(decoded, Decoded)
        assert decoded.channel_id == key.decode()


def test_bench_command_rejects_an_unknown_step_before_touching_services() -> None:
    from typer.testing import CliRunner

    from livestream.cli import app

    result = CliRunner().invoke(app, ["bench", "--skip", "drain,nope"])
    assert result.exit_code == 2
    assert "nope" in result.output


# Scaling and takeover ------------------------------------------------------------------------------------------

METRICS_TEXT = """# HELP livestream_worker_ready 1 if the worker is ready
# TYPE livestream_worker_ready gauge
livestream_worker_ready 1.0
livestream_events_processed_total 1234.0
livestream_owned_partitions 2.0
livestream_partition_owned{topic="ns.events",partition="0"} 1.0
livestream_partition_owned{topic="ns.events",partition="1"} 0.0
livestream_partition_owned{topic="ns.events",partition="2"} 1.0
livestream_consumer_lag_records{topic="ns.events",partition="0"} 12.0
livestream_consumer_lag_records{topic="ns.events",partition="2"} 3000.0
livestream_partition_last_progress_timestamp_seconds{topic="ns.events",partition="0"} 1.7000000015e+09
livestream_partition_last_progress_timestamp_seconds{topic="ns.events",partition="2"} 1.7e+09
livestream_views_total 99.0
"""


def test_worker_metrics_are_parsed_into_partition_health() -> None:
    health = parse_worker_metrics(METRICS_TEXT)
    assert health.ready is True
    assert health.owned == {0, 2}
    assert health.lag == {0: 12, 2: 3000}
    assert health.progress == {0: pytest.approx(1_700_000_001.5), 2: 1_700_000_000.0}
    assert health.events_processed == 1234
    assert parse_worker_metrics(METRICS_TEXT.replace("ready 1.0", "ready 0.0")).ready is False
    assert parse_worker_metrics("").owned == frozenset()


def _health(owned: set[int], lag: int | None = 0, progress: float = 100.0, ready: bool = True) -> WorkerHealth:
    return WorkerHealth(
        ready=ready,
        owned=frozenset(owned),
        lag={} if lag is None else dict.fromkeys(owned, lag),
        progress=dict.fromkeys(owned, progress),
    )


def test_settled_needs_every_partition_owned_once_ready_caught_up_and_progress_after_the_event() -> None:
    since = 50.0
    assert settled({"a": _health({0, 1}), "c": _health({2, 3})}, 4, since)
    assert not settled({"a": _health({0, 1})}, 4, since)  # partitions 2 and 3 have no owner
    assert not settled({"a": _health({0, 1, 2}), "c": _health({2, 3})}, 4, since)  # partition 2 owned twice
    assert not settled({"a": _health({0, 1, 2, 3}), "c": _health(set())}, 4, since)  # the joiner owns nothing
    assert not settled({"a": _health({0, 1}), "c": None}, 4, since)  # a worker does not answer
    assert not settled({"a": _health({0, 1}), "c": _health({2, 3}, ready=False)}, 4, since)
    assert not settled({"a": _health({0, 1}), "c": _health({2, 3}, lag=1000)}, 4, since)  # not caught up
    assert not settled({"a": _health({0, 1}), "c": _health({2, 3}, lag=None)}, 4, since)  # nothing processed yet
    assert not settled({"a": _health({0, 1}), "c": _health({2, 3}, progress=49.0)}, 4, since)  # before the event
    assert settled({"a": _health({0, 1}), "c": _health({2, 3}, lag=999)}, 4, since)
    # More workers than partitions: an idle worker is fine.
    assert settled({"a": _health({0}), "b": _health({1}), "c": _health(set())}, 2, since)


def test_takeover_times_from_a_series_of_polls_after_a_kill() -> None:
    kill = 100.0
    before = {"a": _health({0, 1}, progress=99.0)}
    polls = [
        Poll(99.0, before),  # before the event: ignored
        Poll(100.2, {"a": _health({0, 1}, progress=100.1)}),  # b's partitions have no owner yet
        Poll(110.4, {"a": None}),  # rebalancing: no answer
        Poll(110.8, {"a": _health({0, 1, 2, 3}, lag=None, progress=110.7, ready=False)}),  # owned, recovering
        Poll(111.5, {"a": _health({0, 1, 2, 3}, lag=None, progress=111.4)}),  # ready, 2 and 3 not processed yet
        Poll(113.0, {"a": _health({0, 1, 2, 3}, lag=4000, progress=112.9)}),  # catching up
        Poll(114.2, {"a": _health({0, 1, 2, 3}, lag=10, progress=114.1)}),  # settled
        Poll(115.0, {"a": _health({0, 1, 2, 3}, lag=10, progress=114.9)}),
    ]
    times = takeover_times(polls, kill, 4)
    assert times.owned_s == pytest.approx(10.8)
    assert times.ready_s == pytest.approx(11.5)
    assert times.settled_s == pytest.approx(14.2)
    unsettled = takeover_times(polls[:-2], kill, 4)
    assert unsettled.owned_s == pytest.approx(10.8)
    assert unsettled.ready_s == pytest.approx(11.5)
    assert unsettled.settled_s is None
    assert takeover_times(polls[:3], kill, 4) == Takeover(None, None, None)


def test_takeover_times_after_a_join_wait_for_the_new_worker() -> None:
    join = 200.0
    settled_before = _health({0, 1, 2, 3}, progress=200.5)
    polls = [
        Poll(200.5, {"a": settled_before, "c": None}),  # c is starting: a alone looks settled, but c is expected
        Poll(203.0, {"a": settled_before, "c": _health(set(), ready=False)}),  # c up, not in the group yet
        Poll(205.0, {"a": _health({2, 3}, progress=205.0), "c": _health({0, 1}, lag=None, progress=204.9)}),
        Poll(206.0, {"a": _health({2, 3}, progress=206.0), "c": _health({0, 1}, lag=3, progress=206.0)}),
    ]
    assert takeover_times(polls, join, 4) == Takeover(5.0, 5.0, 6.0)


def _sample(at: float, processed: tuple[int, ...], complete: bool, cpu_s: float) -> ScalingSample:
    return ScalingSample(at, processed, complete, cpu_s)


def test_scaling_throughput_runs_from_the_first_processed_event_and_from_the_complete_group() -> None:
    samples = [
        _sample(10.0, (0, 0), False, 1.0),
        _sample(10.5, (1_000, 0), False, 1.5),  # the first worker alone: the whole interval starts here
        _sample(12.0, (5_000, 1_000), True, 4.0),  # both workers own partitions: the steady interval starts here
        _sample(14.0, (30_000, 20_000), True, 10.0),
    ]
    whole, steady = scaling_throughput(samples, 50_000)
    assert whole == Throughput(49_000, 3.5, 8.5, 50_000)
    assert steady == Throughput(44_000, 2.0, 6.0, 50_000)
    assert steady.eps == 22_000
    # The group complete only at the last sample: no steady interval.
    whole, steady = scaling_throughput([*samples[:2], _sample(14.0, (30_000, 20_000), True, 10.0)], 50_000)
    assert steady is None
    with pytest.raises(BenchError):
        scaling_throughput(samples[:-1], 50_000)


def test_final_line_appends_the_scaling_and_takeover_keys_last() -> None:
    figures = {"pipeline_single_eps": 5.0, "scaling_eps_2w": 9.0, "scaling_steady_eps_2w": 9.5, "bench_seconds": 1.0}
    data = json.loads(final_line(figures))
    keys = list(data)
    assert keys[: len(REQUIRED_KEYS)] == list(REQUIRED_KEYS)
    assert keys[-len(APPENDED_KEYS) :] == list(APPENDED_KEYS)
    assert data["scaling_eps_2w"] == 9.0
    assert data["takeover_kill9_s_standby0"] is None
    assert keys.index("scaling_steady_eps_2w") < keys.index("bench_seconds") < keys.index("scaling_eps_1w")
    assert "kill -9" in table(figures)


def test_bench_steps_include_scaling_and_takeover() -> None:
    from livestream.bench.runner import STEPS

    assert {"scaling", "takeover"} <= set(STEPS)


def test_rebalance_heartbeat_warnings_are_not_log_problems(tmp_path: Path) -> None:
    from livestream.bench.common import log_problems

    log = tmp_path / "worker.log"
    log.write_text(
        "[WARNING] Heartbeat failed for group ns-worker because it is rebalancing\n"
        "[ERROR] Heartbeat failed: KafkaConnectionError()\n"
        "[INFO] all good\n"
    )
    assert log_problems([log]) == ["worker.log: [ERROR] Heartbeat failed: KafkaConnectionError()"]
