"""The benchmark's pure parts: percentiles, exactness checks, targets, the final JSON line (no services)."""

from __future__ import annotations

import json
import math

import pytest

from livestream.bench.common import BenchError, ChildResult, PartitionTally, Throughput, check_exact, percentile
from livestream.bench.memory import livestream_records
from livestream.bench.report import REQUIRED_KEYS, final_line, table, targets
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
    assert set(data) == {*REQUIRED_KEYS, "extra_cpu_s_per_m"}
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
    }
    verdicts = {t.name: t.met for t in targets(figures)}
    assert verdicts == {
        "pipeline single / quixstreams window": False,  # 0.62 < 3
        "pipeline single events/s per worker": True,
        "pipeline single / faust pass-through": True,  # 6.2 >= 0.9
        "pipeline batch events/s per worker": True,
        "pipeline batch / quixstreams window": True,  # 1.6 >= 1.5
        "p50 event -> Redis at 50% single rate (ms)": True,
        "p99 event -> Redis at 50% single rate (ms)": False,
        "RSS at 100k active livestreams (MB)": True,
        "full fair replay wall (s)": None,
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
