"""The fold (stream.state) against the independent oracle, on generated fairs and on hand-made edge cases."""

from __future__ import annotations

import pytest

from schemas.events import Event, Leave, Like, Order, View
from stream.replay.generator import FairReplay
from stream.replay.oracle import COUNTER_FIELDS as ORACLE_FIELDS
from stream.replay.oracle import Oracle
from stream.replay.profile import OCOP_FAIR, scaled
from stream.state import (
    COUNTER_FIELDS,
    ChannelState,
    Counters,
    FoldEffects,
    IdRows,
    WindowSpec,
    apply_record,
    average_order_value,
    close_windows,
    decode_state,
    encode_state,
    idle_watermark,
    watermark,
)

SPEC = WindowSpec(size_ms=60_000, grace_ms=10_000)
BASE = 1_687_572_000_000  # 2023-06-24 02:00 UTC = 09:00 UTC+7, a whole minute


Closed = dict[tuple[str, int, int], Counters]


def fold_replay(replay: FairReplay, batch: int) -> tuple[dict[str, ChannelState], Closed]:
    """Fold a replay the way the agent does: records of up to ``batch`` events, offsets per partition.

    Returns the final states and every closed window by (channel, size, start).
    """
    states: dict[str, ChannelState] = {}
    closed: Closed = {}
    offsets: dict[str, int] = {}
    store = DictStore()
    for minute in replay.minutes():
        ids = store.batch()
        for channel_id, events in minute.by_channel.items():
            state = states.setdefault(channel_id, ChannelState(channel_id=channel_id))
            for i in range(0, len(events), batch):
                offset = offsets[channel_id] = offsets.get(channel_id, -1) + 1
                assert apply_record(state, events[i : i + batch], 0, offset, SPEC, FoldEffects(), ids=ids)
                assert state.duplicate_events == 0
            for w in close_windows(state, watermark(state, SPEC), SPEC):
                assert (channel_id, w.size_ms, w.start_ms) not in closed, "a window closed twice"
                closed[(channel_id, w.size_ms, w.start_ms)] = w.counters
            state = decode_state(encode_state(state))  # what the table stores is what comes back
            states[channel_id] = state
        store.save(ids)
    for channel_id, state in states.items():  # end of stream: close everything (as the idle timeout would)
        for w in close_windows(state, state.max_ts_ms + 10 * SPEC.size_ms, SPEC):
            assert (channel_id, w.size_ms, w.start_ms) not in closed, "a window closed twice"
            closed[(channel_id, w.size_ms, w.start_ms)] = w.counters
    return states, closed


@pytest.mark.parametrize(("scale", "seed", "batch"), [(0.002, 1, 1), (0.01, 7, 50), (0.02, 3, 500)])
def test_fold_equals_oracle(scale: float, seed: int, batch: int) -> None:
    replay = FairReplay(scaled(OCOP_FAIR, scale), seed)
    states, closed = fold_replay(replay, batch)
    oracle = replay.oracle
    assert ORACLE_FIELDS == COUNTER_FIELDS
    assert set(states) == set(oracle.channels)
    for channel_id, expected in oracle.channels.items():
        state = states[channel_id]
        assert state.totals.as_dict() == {f: getattr(expected, f) for f in COUNTER_FIELDS}, channel_id
        assert state.peak_concurrent == expected.peak_concurrent
        assert state.concurrent == expected.concurrent
        assert set(state.creators) == set(expected.creators)
        assert (state.first_ts_ms, state.last_ts_ms) == (expected.first_ts_ms, expected.last_ts_ms)
        assert state.late_events == 0
    minute = {(c, s): v for (c, size, s), v in closed.items() if size == 60_000}
    assert set(minute) == set(oracle.windows)
    for key, expected_window in oracle.windows.items():
        assert minute[key].as_dict() == {f: getattr(expected_window, f) for f in COUNTER_FIELDS}, key
    # 5-minute hopping windows: one per minute end that has events in the 5 minutes before it.
    hopping = {(c, s): v for (c, size, s), v in closed.items() if size == 300_000}
    expected_hopping: dict[tuple[str, int], dict[str, int]] = {}
    for (channel_id, start), w in oracle.windows.items():
        for hop_start in range(start - 240_000, start + 60_000, 60_000):
            sums = expected_hopping.setdefault((channel_id, hop_start), dict.fromkeys(COUNTER_FIELDS, 0))
            for f in COUNTER_FIELDS:
                sums[f] += getattr(w, f)
    assert set(hopping) == set(expected_hopping)
    for key, sums in expected_hopping.items():
        assert hopping[key].as_dict() == sums, key
    summary = oracle.summary()
    assert sum(s.totals.views for s in states.values()) == summary["views"] == round(OCOP_FAIR.views * scale)
    assert sum(s.totals.gmv_vnd for s in states.values()) == summary["gmv_vnd"]


def _view(i: int, ts: int, channel: str = "c1") -> View:
    return View(event_id=f"v{i}", channel_id=channel, creator_id="cr1", campaign="fair", user_id=f"u{i}", ts_ms=ts)


def test_redelivered_record_is_skipped_and_counted() -> None:
    state = ChannelState(channel_id="c1")
    effects = FoldEffects()
    assert apply_record(state, [_view(1, BASE)], partition=2, offset=10, spec=SPEC, effects=effects)
    assert not apply_record(state, [_view(1, BASE)], partition=2, offset=10, spec=SPEC, effects=effects)
    assert not apply_record(state, [_view(0, BASE)], partition=2, offset=9, spec=SPEC, effects=effects)
    assert apply_record(state, [_view(2, BASE)], partition=2, offset=11, spec=SPEC, effects=effects)
    assert state.totals.views == 2
    assert state.redelivered_records == effects.redelivered_records == 2
    assert effects.viewers == {"c1": ["u1", "u2"]}


def test_windows_close_at_end_plus_grace_and_late_events_are_reported() -> None:
    state = ChannelState(channel_id="c1")
    effects = FoldEffects()
    apply_record(state, [_view(1, BASE + 5_000)], 0, 0, SPEC, effects)
    # watermark BASE+69_999 < end (BASE+60_000) + grace (10_000): still open
    apply_record(state, [_view(2, BASE + 69_999)], 0, 1, SPEC, effects)
    assert close_windows(state, watermark(state, SPEC), SPEC) == []
    # an event inside grace still lands in the first window
    apply_record(state, [_view(3, BASE + 59_999)], 0, 2, SPEC, effects)
    apply_record(state, [_view(4, BASE + 70_000)], 0, 3, SPEC, effects)
    closed = close_windows(state, watermark(state, SPEC), SPEC)
    assert [(w.start_ms, w.size_ms, w.counters.views) for w in closed] == [
        (BASE, 60_000, 2),
        (BASE - 240_000, 300_000, 2),
    ]
    # beyond grace: late, counted stream-to-date, in no window
    apply_record(state, [_view(5, BASE + 1_000)], 0, 4, SPEC, effects)
    assert state.late_events == 1
    assert [e.event_id for e in effects.late] == ["v5"]
    assert state.totals.views == 5
    assert BASE not in state.windows
    assert sum(c.views for c in state.windows.values()) == 2  # the 09:01 window: v2 and v4


def test_orders_count_by_status_and_money_is_integer() -> None:
    def order(i: int, status: str, amount: int = 250_000) -> Order:
        return Order(
            event_id=f"o{i}{status}",
            channel_id="c1",
            creator_id="cr1",
            campaign="fair",
            user_id="u1",
            ts_ms=BASE + i,
            order_id=f"o{i}",
            product_id="lychee",
            quantity=2,
            amount_vnd=amount,
            status=status,  # type: ignore[arg-type]
        )

    state = ChannelState(channel_id="c1")
    events: list[Event] = [
        order(1, "placed"),
        order(1, "paid"),
        order(2, "placed"),
        order(2, "cancelled"),
        order(3, "placed"),
        order(3, "paid", 333_333),
        order(3, "refunded", 333_333),
    ]
    apply_record(state, events, 0, 0, SPEC, FoldEffects())
    t = state.totals
    assert (t.orders_placed, t.orders_paid, t.orders_cancelled, t.orders_refunded) == (3, 2, 1, 1)
    assert t.gmv_vnd == 583_333 and isinstance(t.gmv_vnd, int)
    assert t.items_sold == 4
    assert average_order_value(t) == 291_666


def test_concurrency_and_likes() -> None:
    state = ChannelState(channel_id="c1")
    leave = Leave(event_id="l1", channel_id="c1", creator_id="cr1", campaign="fair", user_id="u1", ts_ms=BASE + 3)
    like = Like(
        event_id="k1", channel_id="c1", creator_id="cr2", campaign="fair", user_id="u2", ts_ms=BASE + 4, count=7
    )
    apply_record(
        state, [_view(1, BASE), _view(2, BASE + 1), leave, like, _view(3, BASE + 5)], 0, 0, SPEC, FoldEffects()
    )
    assert (state.concurrent, state.peak_concurrent) == (2, 2)
    assert (state.totals.likes, state.totals.like_events) == (7, 1)
    assert state.creators == ["cr1", "cr2"]


def test_state_round_trips_through_bytes() -> None:
    state = ChannelState(channel_id="c1")
    apply_record(state, [_view(1, BASE), _view(2, BASE + 61_000)], 3, 42, SPEC, FoldEffects())
    again = decode_state(encode_state(state))
    assert again == state
    assert again.windows.keys() == {BASE, BASE + 60_000}


def test_oracle_from_events_matches_fold_of_same_events() -> None:
    events = [_view(i, BASE + i * 1000) for i in range(100)]
    oracle = Oracle.from_events(events)
    state = ChannelState(channel_id="c1")
    apply_record(state, events, 0, 0, SPEC, FoldEffects())
    assert state.totals.views == oracle.channels["c1"].views == 100


class DictStore:
    """Stands in for the dedup table: rows persist across batches the way the agent writes them back."""

    def __init__(self, part_size: int = 512) -> None:
        self.rows: dict[tuple[str, int, int], dict[str, int]] = {}
        self.part_size = part_size

    def batch(self) -> IdRows:
        return IdRows(lambda c, bucket, part: dict(self.rows.get((c, bucket, part), {})), part_size=self.part_size)

    def save(self, ids: IdRows) -> None:
        for key in ids.changed:
            self.rows[key] = dict(ids.rows[key])
        for key in ids.dropped:
            self.rows.pop(key, None)


def test_repeated_event_ids_count_once_within_the_horizon() -> None:
    store = DictStore()
    state = ChannelState(channel_id="c1")
    ids = store.batch()
    effects = FoldEffects()
    apply_record(state, [_view(1, BASE), _view(2, BASE + 1_000)], 0, 0, SPEC, effects, ids=ids)
    apply_record(state, [_view(1, BASE), _view(3, BASE + 2_000)], 0, 1, SPEC, effects, ids=ids)  # retry of v1
    store.save(ids)
    assert state.totals.views == 3
    assert state.duplicate_events == effects.duplicate_events == 1
    again = decode_state(encode_state(state))  # a restart: state and id rows come back from storage
    ids = store.batch()
    apply_record(
        again,
        [_view(2, BASE + 1_000), _view(4, BASE + 3_000), _view(4, BASE + 3_000)],
        0,
        2,
        SPEC,
        FoldEffects(),
        ids=ids,
    )
    store.save(ids)
    assert again.totals.views == 4 and again.duplicate_events == 3
    # Beyond the horizon (10 minutes of event time) rows are dropped.
    ids = store.batch()
    apply_record(again, [_view(9, BASE + 11 * 60_000)], 0, 3, SPEC, FoldEffects(), ids=ids)
    store.save(ids)
    assert min(again.id_buckets) >= (BASE + 60_000) // 60_000
    assert ("c1", BASE // 60_000, 0) not in store.rows


def test_ids_stored_by_a_lost_state_change_do_not_hide_the_redo() -> None:
    """Crash after the id row was saved but before the state was: the redelivered record must count."""
    store = DictStore()
    state = ChannelState(channel_id="c1")
    ids = store.batch()
    apply_record(state, [_view(1, BASE)], 0, 0, SPEC, FoldEffects(), ids=ids)
    store.save(ids)
    saved = decode_state(encode_state(state))
    ids = store.batch()
    apply_record(state, [_view(2, BASE + 5)], 0, 1, SPEC, FoldEffects(), ids=ids)
    store.save(ids)  # the id row of offset 1 reached storage, the state after offset 1 did not
    ids = store.batch()
    assert apply_record(saved, [_view(2, BASE + 5)], 0, 1, SPEC, FoldEffects(), ids=ids)
    assert saved.totals.views == 2 and saved.duplicate_events == 0


def test_idle_watermark_closes_the_last_window_after_the_timeout() -> None:
    state = ChannelState(channel_id="c1")
    wall = BASE + 30_000  # appended when it happened
    apply_record(state, [_view(1, BASE + 30_000)], 0, 0, SPEC, FoldEffects(), now_ms=wall)
    assert idle_watermark(state, SPEC, now_ms=wall + SPEC.idle_timeout_ms - 1) == BASE + 30_000
    assert close_windows(state, idle_watermark(state, SPEC, wall + 29_999), SPEC) == []
    later = wall + SPEC.idle_timeout_ms  # idle: every window holding the newest event closes
    closed = close_windows(state, idle_watermark(state, SPEC, later), SPEC)
    assert [(w.start_ms, w.size_ms) for w in closed] == [(BASE, 60_000)] + [
        (BASE - 240_000 + i * 60_000, 300_000) for i in range(5)
    ]


def test_a_resent_payment_counts_once_per_order_even_with_another_event_id() -> None:
    from stream.state import OrderBook, OrderRow

    stored: dict[tuple[str, str], OrderRow] = {}

    def order(event_id: str, status: str, ts: int) -> Order:
        return Order(
            event_id=event_id,
            channel_id="c",
            creator_id="h",
            campaign="f",
            user_id="u",
            ts_ms=ts,
            order_id="o-1",
            product_id="p",
            quantity=2,
            amount_vnd=100_000,
            status=status,  # type: ignore[arg-type]
        )

    state = ChannelState(channel_id="c")
    book = OrderBook(lambda c, o: dict(stored.get((c, o), {})))
    effects = FoldEffects()
    apply_record(state, [order("e1", "placed", BASE), order("e2", "paid", BASE + 1)], 0, 0, SPEC, effects, orders=book)
    apply_record(state, [order("e3", "paid", BASE + 2)], 0, 1, SPEC, effects, orders=book)  # webhook re-sent
    apply_record(
        state, [order("e4", "paid", BASE + 3), order("e5", "paid", BASE + 3)], 0, 2, SPEC, effects, orders=book
    )
    apply_record(state, [order("e6", "refunded", BASE + 4)], 0, 3, SPEC, effects, orders=book)
    totals = state.totals
    assert (totals.orders_placed, totals.orders_paid, totals.items_sold, totals.gmv_vnd) == (1, 1, 2, 100_000)
    assert totals.orders_refunded == 1, "a refund after payment counts in its own counter, GMV stays gross"
    assert state.duplicate_order_updates == effects.duplicate_orders == 3

    # A crash lost the state change of the record that counted the payment (its mark was saved): redone, it counts.
    stored.update(book.rows)
    fresh = ChannelState(channel_id="c")
    redo = OrderBook(lambda c, o: dict(stored.get((c, o), {})))
    apply_record(
        fresh, [order("e1", "placed", BASE), order("e2", "paid", BASE + 1)], 0, 0, SPEC, FoldEffects(), orders=redo
    )
    assert (fresh.totals.orders_placed, fresh.totals.orders_paid) == (1, 1)


def test_a_livestream_that_ends_and_comes_back_80_s_later_counts_in_its_windows() -> None:
    from schemas.events import LiveEnd
    from stream.state import ended_watermark

    state = ChannelState(channel_id="c1")
    effects = FoldEffects()
    closed: list[tuple[int, int]] = []
    offset = 0

    def feed(events: list[Event], clock: int) -> None:
        nonlocal offset
        apply_record(state, events, 0, offset, SPEC, effects)
        offset += 1
        for w in close_windows(state, watermark(state, SPEC), SPEC):
            closed.append((w.size_ms, w.start_ms))
        for w in close_windows(state, ended_watermark(state, SPEC, clock), SPEC):
            closed.append((w.size_ms, w.start_ms))

    feed([_view(1, BASE + 5_000)], BASE + 5_000)
    end = LiveEnd(event_id="end", channel_id="c1", creator_id="h", campaign="f", user_id="h", ts_ms=BASE + 30_000)
    feed([end], BASE + 30_000)
    feed([], BASE + 45_000)  # the partition's clock passes the end + grace: the ended livestream's windows close
    assert (60_000, BASE) in closed and state.windows == {}
    back = BASE + 30_000 + 80_000  # 80 s after live_end
    feed([_view(2, back), _view(3, back + 1_000)], back)
    assert state.ended_ms == -1, "a later event makes it live again"
    assert effects.late == [], "the restart's events are on time"
    start = back - back % 60_000
    assert state.windows[start].views == 2
    feed([_view(4, start + 60_000 + SPEC.grace_ms + 1)], start + 60_000 + SPEC.grace_ms + 1)
    assert (60_000, start) in closed and closed.count((60_000, start)) == 1


def test_a_hot_minute_is_stored_in_parts_and_a_batch_rewrites_only_the_open_one() -> None:
    store = DictStore(part_size=4)
    state = ChannelState(channel_id="c1")
    for batch in range(5):  # 5 batches of 3 records: 15 ids in one minute
        ids = store.batch()
        for i in range(3):
            n = batch * 3 + i
            apply_record(state, [_view(n, BASE + n)], 0, n, SPEC, FoldEffects(), ids=ids)
        assert len(ids.changed) <= 2, "only the open part (and one just sealed) is written"
        store.save(ids)
        state = decode_state(encode_state(state))
    assert state.id_parts[BASE // 60_000] == 4
    assert sum(len(r) for r in store.rows.values()) == 15
    ids = store.batch()  # a restart: every part is read back; a retry of the first id is recognised
    apply_record(state, [_view(0, BASE), _view(99, BASE + 99)], 0, 15, SPEC, FoldEffects(), ids=ids)
    assert state.duplicate_events == 1 and state.totals.views == 16
