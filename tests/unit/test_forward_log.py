"""Forwarded records are logged as rate-limited summaries, never a line per record."""

from __future__ import annotations

import logging

import pytest

from agents.forwarding import ForwardLog
from stream.fold import Record


def _forwards(n: int, start: int = 0) -> dict[int, list[Record]]:
    """``n`` records of partition 0, copied alternately to partitions 1 and 2."""
    by_target: dict[int, list[Record]] = {1: [], 2: []}
    for i in range(n):
        by_target[1 + i % 2].append(Record(0, start + i, 0, f"k{i}".encode(), b"{}"))
    return by_target


def test_the_first_forward_is_reported_at_once_then_one_summary_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    forwards = ForwardLog("ns.events", interval_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="agents.forwarding"):
        forwards.note(_forwards(3))
        for step in range(50):
            now[0] += 1.0
            forwards.note(_forwards(1000, start=3 + step * 1000))
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1, "50 s of forwarding after the first report: no second line yet"
        assert lines[0].startswith("forwarded 3 records") and "ns.events[0]@0" in lines[0]
        now[0] += 10.0
        forwards.note(_forwards(7, start=10**6))
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2 and lines[1].startswith("forwarded 50007 records") and "(50010 since start" in lines[1]
        assert "0->1: 25004" in lines[1] and "0->2: 25003" in lines[1]
    assert forwards.total == 50_010


def test_no_forward_no_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agents.forwarding"):
        ForwardLog("t").note({})
    assert caplog.records == []


def test_a_burst_that_ends_within_the_interval_is_reported_by_the_timer(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    forwards = ForwardLog("ns.events", interval_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="agents.forwarding"):
        forwards.note(_forwards(1))
        now[0] += 5.0
        forwards.note(_forwards(500, start=1))  # the burst ends here: no later forward
        forwards.report_due()
        assert len(caplog.records) == 1
        now[0] += 56.0
        forwards.report_due()
        forwards.report_due()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[1].startswith("forwarded 500 records") and "(501 since start" in lines[1]
