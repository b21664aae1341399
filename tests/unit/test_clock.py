"""Partition clocks (stream.clock): the newest two livestream clocks, and one running ahead cannot page others."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.clock import PartitionClocks


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 10_000)), min_size=1, max_size=60))
def test_keeps_the_two_newest_contributions_of_distinct_livestreams(updates: list[tuple[str, int]]) -> None:
    clocks = PartitionClocks(lead_ms=60_000)
    best: dict[str, int] = {}
    for channel, value in updates:
        clocks.advance(0, channel, value)
        best[channel] = max(best.get(channel, -1), value)
    assert [v for _, v in clocks.top[0]] == sorted(best.values(), reverse=True)[:2]
    assert len({c for c, _ in clocks.top[0]}) == len(clocks.top[0])
    assert clocks.clock(0) == max(best.values())


def test_one_livestream_far_ahead_does_not_move_the_silence_clock() -> None:
    clocks = PartitionClocks(lead_ms=60_000)
    clocks.advance(0, "g", 1_000_000)
    clocks.advance(0, "h", 1_001_000)
    assert clocks.silence_clock(0) == 1_001_000
    clocks.advance(0, "f", 1_000_000 + 50 * 60_000)  # 50 minutes ahead
    assert clocks.clock(0) == 1_000_000 + 50 * 60_000, "the partition clock (ended livestreams) takes it"
    assert clocks.silence_clock(0) == 1_001_000, "stream_down does not"
    clocks.advance(0, "h", 1_000_000 + 50 * 60_000 - 1_000)  # a second livestream confirms the time
    assert clocks.silence_clock(0) == 1_000_000 + 50 * 60_000


def test_checks_are_due_when_the_clock_moved_a_second() -> None:
    clocks = PartitionClocks(lead_ms=60_000)
    assert clocks.advance(0, "a", 10_000)
    clocks.scanned(0)
    assert not clocks.advance(0, "a", 10_999)
    assert clocks.advance(0, "b", 11_000)
