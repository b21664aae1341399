"""Partition clocks (stream.clock): the newest two livestream clocks, and one running ahead cannot page others."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.clock import PartitionClocks, TickHealth, quiet_ms


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


def test_a_kafka_outage_restarts_the_healthy_time_of_ticks() -> None:
    health = TickHealth(healthy_since_ms=0, outage_after_ms=5_000)
    assert health.may_send(1_000, previous_done=True)
    health.sent(1_000)
    assert not health.may_send(2_000, previous_done=False), "no new round while the last one is unacknowledged"
    assert health.healthy_since_ms == 0, "a slow acknowledgement is not an outage yet"
    assert not health.may_send(7_000, previous_done=False)
    assert health.may_send(9_000, previous_done=True)
    assert health.healthy_since_ms == 9_000, "after the outage silence counts from when ticks got through again"
    health.sent(9_000)
    assert health.may_send(10_000, previous_done=True)
    assert health.healthy_since_ms == 9_000


def test_a_failed_round_is_an_outage() -> None:
    health = TickHealth(healthy_since_ms=0, outage_after_ms=5_000)
    health.sent(1_000)
    assert health.may_send(2_000, previous_done=True, previous_failed=True)
    assert health.healthy_since_ms == 2_000


def test_quiet_time_counts_from_the_later_of_last_record_and_healthy_time() -> None:
    assert quiet_ms(100_000, 40_000, -1) == 60_000
    assert quiet_ms(100_000, 40_000, 90_000) == 10_000
    assert quiet_ms(100_000, 95_000, 90_000) == 5_000


def test_a_round_never_acknowledged_is_abandoned_after_its_deadline() -> None:
    """A tick round whose requests are lost (a broker that stood still, a connection black-holed) does not stop
    ticks until the client's 20-minute request timeout: after ``abandon_after_ms`` another round goes out, and once
    one is acknowledged silence counts from then."""
    health = TickHealth(healthy_since_ms=0, outage_after_ms=5_000, abandon_after_ms=30_000)
    assert health.may_send(1_000, previous_done=True)
    health.sent(1_000)
    assert not health.may_send(20_000, previous_done=False)
    assert health.in_outage
    assert health.may_send(31_000, previous_done=False), "abandoned: a new round is sent"
    assert health.healthy_since_ms == 31_000, "sent in an outage: silence counts from now at the earliest"
    health.sent(31_000)
    assert not health.may_send(32_000, previous_done=False)
    assert health.may_send(33_000, previous_done=True)
    assert health.healthy_since_ms == 33_000 and not health.in_outage
