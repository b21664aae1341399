from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.windows import hopping_starts, is_closed, tumbling_start


@given(st.integers(min_value=0, max_value=2**45), st.sampled_from([1_000, 60_000, 300_000]))
def test_tumbling_window_contains_its_event(ts: int, size: int) -> None:
    start = tumbling_start(ts, size)
    assert start % size == 0
    assert start <= ts < start + size


@given(st.integers(min_value=10**6, max_value=2**45))
def test_hopping_five_minutes_by_one(ts: int) -> None:
    starts = hopping_starts(ts, 300_000, 60_000)
    assert len(starts) == 5
    assert all(s % 60_000 == 0 and s <= ts < s + 300_000 for s in starts)


def test_window_closes_exactly_at_end_plus_grace() -> None:
    assert not is_closed(0, 60_000, 10_000, 69_999)
    assert is_closed(0, 60_000, 10_000, 70_000)
