"""Property tests of the fold: disorder, duplicates and lateness (hypothesis).

Input: the events of one livestream, each its own Kafka record, in an arbitrary arrival order with client retries
(repeated event ids). Expected, computed independently here: an event is *late* if, when it first arrives, its
window already closed, i.e. ``window_end + grace <= max event time seen before it``; every other event lands in
its window. Then the windows equal those of the sorted, de-duplicated on-time events, and exactly the late events
are reported late.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import View
from stream.state import (
    ChannelState,
    FoldEffects,
    IdRows,
    WindowSpec,
    apply_record,
    close_windows,
    no_stored_ids,
    watermark,
)

SPEC = WindowSpec(size_ms=60_000, grace_ms=10_000, hop_windows=1)
BASE = 1_687_572_000_000


def view(i: int, ts: int) -> View:
    return View(event_id=f"e{i}", channel_id="c1", creator_id="cr", campaign="f", user_id=f"u{i % 7}", ts_ms=ts)


arrivals = st.lists(
    st.tuples(st.integers(min_value=0, max_value=40), st.integers(min_value=0, max_value=8 * 60_000)),
    min_size=1,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(arrivals)
def test_disordered_duplicated_late_input(arrival: list[tuple[int, int]]) -> None:
    # An id always carries the same event time (a retry resends the same event).
    ts_of: dict[int, int] = {}
    events = []
    for event_no, offset_ms in arrival:
        ts = ts_of.setdefault(event_no, BASE + offset_ms)
        events.append(view(event_no, ts))

    # Expected, independently: first arrival decides; late if its window is closed by what came before.
    max_seen = -1
    first_seen: set[str] = set()
    on_time: list[View] = []
    late: list[str] = []
    for event in events:
        if event.event_id in first_seen:
            continue
        first_seen.add(event.event_id)
        window_end = event.ts_ms - event.ts_ms % 60_000 + 60_000
        if max_seen >= 0 and window_end + SPEC.grace_ms <= max_seen:
            late.append(event.event_id)
        else:
            on_time.append(event)
        max_seen = max(max_seen, event.ts_ms)
    expected_windows = Counter(e.ts_ms - e.ts_ms % 60_000 for e in on_time)

    # The fold, one record per event, closing after each record as the agent does.
    state = ChannelState(channel_id="c1")
    effects = FoldEffects()
    ids = IdRows(no_stored_ids)  # one long batch: rows stay in memory
    closed: dict[int, int] = {}
    for offset, event in enumerate(events):
        apply_record(state, [event], 0, offset, SPEC, effects, ids=ids)
        for w in close_windows(state, watermark(state, SPEC), SPEC):
            assert w.start_ms not in closed, "window emitted twice"
            closed[w.start_ms] = w.counters.views
    for w in close_windows(state, state.max_ts_ms + 10 * 60_000, SPEC):
        assert w.start_ms not in closed
        closed[w.start_ms] = w.counters.views

    assert closed == dict(expected_windows)
    assert [e.event_id for e in effects.late] == late
    assert state.totals.views == len(first_seen)  # stream-to-date counts every distinct event once
    assert state.duplicate_events == len(events) - len(first_seen)
