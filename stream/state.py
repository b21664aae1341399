"""Per-livestream aggregation state and the fold of events into it.

One :class:`ChannelState` holds everything that is known about a livestream: stream-to-date counters, concurrent
viewers, the open 1-minute event-time windows, the watermark, and the Kafka offset of the last record applied.
It is stored as *one* table value, so a state and the offset it reflects are always persisted together; after a
crash Kafka redelivers records at or below ``last_offset`` and :func:`apply_record` skips them, which keeps every
counter exact under at-least-once delivery.

Semantics:
- a paid order is an ``order`` event with status ``paid``; GMV is the sum of their ``amount_vnd`` (gross: a later
  refund is counted in ``orders_refunded`` and does not lower GMV or the paid count);
- each status counts once per order: with an :class:`OrderBook`, a second ``paid`` (or ``placed``, ``cancelled``,
  ``refunded``) of the same ``order_id`` on the same livestream within ``order_horizon_ms`` of event time, even with
  another ``event_id`` (a platform re-sending a payment webhook), changes no counter and is counted in
  ``duplicate_order_updates``; a cancel or refund after payment is counted in its own counter and leaves the paid
  count and GMV as they are;
- concurrent viewers = views - leaves so far; ``peak_concurrent`` is its maximum over the stream;
- windows are ``[start, start + size)`` by event time; a window closes when the watermark (max event time seen minus
  allowed lateness) reaches ``end + grace``; an event for a closed window is *late*: it still counts stream-to-date,
  is counted in ``late_events`` and returned to the caller for the late path, but changes no window.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from schemas.events import AddToCart, Comment, Event, Leave, Like, LiveEnd, Order, Share, View
from stream.alerts import ActiveAlert, fold_text
from stream.windows import tumbling_start


class Counters(msgspec.Struct, gc=False):
    """Additive counters of a livestream over some span of event time."""

    views: int = 0
    leaves: int = 0
    comments: int = 0
    likes: int = 0
    like_events: int = 0
    shares: int = 0
    add_to_carts: int = 0
    orders_placed: int = 0
    orders_paid: int = 0
    orders_cancelled: int = 0
    orders_refunded: int = 0
    items_sold: int = 0
    gmv_vnd: int = 0

    def merge(self, other: Counters) -> None:
        """Add ``other`` into ``self`` (counters form a commutative monoid)."""
        for name in COUNTER_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def subtract(self, other: Counters) -> None:
        """Take ``other`` out of ``self`` (the increments between two readings of one livestream's counters)."""
        for name in COUNTER_FIELDS:
            setattr(self, name, getattr(self, name) - getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTER_FIELDS}


COUNTER_FIELDS: Final = Counters.__struct_fields__


class ChannelState(msgspec.Struct):
    """Everything known about one livestream. Persisted as one table value (see module docstring)."""

    channel_id: str
    campaign: str = ""
    creators: list[str] = msgspec.field(default_factory=list)
    totals: Counters = msgspec.field(default_factory=Counters)
    concurrent: int = 0
    peak_concurrent: int = 0
    first_ts_ms: int = -1
    last_ts_ms: int = -1
    max_ts_ms: int = -1
    partition: int = -1
    last_offset: int = -1
    windows: dict[int, Counters] = msgspec.field(default_factory=dict)
    """Open (not yet closed) tumbling windows by start ms."""
    closed_through_ms: int = -1
    """Every window with start <= this has been closed and emitted; events for them are late."""
    hop_through_ms: int = -1
    """Hopping windows ending at or before this + size have been emitted (it can run ahead of
    ``closed_through_ms`` after an idle or ended close, see :func:`close_windows`)."""
    recent_closed: dict[int, Counters] = msgspec.field(default_factory=dict)
    """The last closed 1-minute windows (by start), from which 5-minute hopping windows are summed."""
    id_buckets: list[int] = msgspec.field(default_factory=list)
    """Event-time minutes (epoch ms // 60000) that have stored applied event ids (see :class:`IdRows`)."""
    id_parts: dict[int, int] = msgspec.field(default_factory=dict)
    """Stored parts of a minute's applied ids, for minutes with more than one part (see :class:`IdRows`)."""
    late_events: int = 0
    duplicate_events: int = 0
    redelivered_records: int = 0
    duplicate_order_updates: int = 0
    """Order events whose (order id, status) was already counted (see :class:`OrderBook`)."""
    last_wall_ms: int = -1
    """Kafka append time of the last applied record (of its original, for a forwarded copy); drives the idle
    watermark."""
    ended_ms: int = -1
    """Event time of the livestream's ``live_end`` (-1 while live; a later event makes it live again)."""
    alerts: dict[str, ActiveAlert] = msgspec.field(default_factory=dict)
    """Active (fired, not yet resolved) alerts of this livestream by rule (see :mod:`stream.alerts`)."""
    closed_concurrent: int = 0
    """Concurrent viewers at the end of the newest closed 1-minute window (views - leaves of closed windows)."""
    recent_concurrent: dict[int, int] = msgspec.field(default_factory=dict)
    """``closed_concurrent`` at the end of each recent closed window, by window start (viewer-drop memory)."""
    recent_paid: dict[int, int] = msgspec.field(default_factory=dict)
    """Paid orders of each recent closed window, by window start (order-surge memory)."""
    first_window_ms: int = -1
    """Start of the first closed 1-minute window."""
    comment_users: dict[int, dict[str, int]] = msgspec.field(default_factory=dict)
    """Comments per user in each open 1-minute window (comment-spam memory, dropped when the window closes)."""
    comment_texts: dict[int, dict[str, int]] = msgspec.field(default_factory=dict)
    """Comments per folded text (:func:`stream.alerts.fold_text`) in each open 1-minute window."""
    watermark_ts_ms: int = -1
    """The event time the watermark follows: the newest event time, each event's taken at most
    ``WindowSpec.watermark_lead_ms`` past its record's append time (-1: ``max_ts_ms``, a state stored before)."""
    source: int = -1
    """The events partition the livestream's last record was appended to by its producer (its copy's original
    partition when it arrived forwarded; -1: its state partition). Idleness and partition clocks are judged per
    source (:mod:`stream.fold`)."""


@dataclass(frozen=True)
class WindowSpec:
    """Window and dedup parameters, in milliseconds.

    ``size_ms`` tumbling windows; hopping windows of ``hop_windows`` tumbling windows advancing by one;
    ``dedup_horizon_ms`` how far back (in event time) a repeated ``event_id`` is recognised.
    """

    size_ms: int = 60_000
    grace_ms: int = 10_000
    lateness_ms: int = 0
    hop_windows: int = 5
    dedup_horizon_ms: int = 600_000
    idle_timeout_ms: int = 30_000
    watermark_lead_ms: int = 5_000
    """How far past its record's Kafka append time an event's time moves the livestream's watermark (an event
    stamped further ahead, by a clock that runs fast, still counts in its own window but closes no other)."""


@dataclass(frozen=True, slots=True)
class FinalWindow:
    """A closed window ``[start_ms, start_ms + size_ms)`` of one livestream and its final counters.

    Tumbling windows also carry their comment tallies (per user, per folded text) for the comment-spam rule.
    """

    start_ms: int
    size_ms: int
    counters: Counters
    comment_users: dict[str, int] = field(default_factory=dict)
    comment_texts: dict[str, int] = field(default_factory=dict)


@dataclass
class FoldEffects:
    """What a fold changed, for the sinks: touched channels, new viewers (for HyperLogLogs), late events."""

    touched: set[str] = field(default_factory=set)
    viewers: dict[str, list[str]] = field(default_factory=dict)
    late: list[Event] = field(default_factory=list)
    redelivered_records: int = 0
    applied_events: int = 0
    duplicate_events: int = 0
    duplicate_orders: int = 0
    gap_ms: int = 0
    """Report silences of at least this much event time in ``gaps`` (0: do not look)."""
    gaps: list[Gap] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Gap:
    """A livestream sent nothing in ``(from_ms, to_ms)``; ``concurrent``/``ended`` as they were during it."""

    channel_id: str
    from_ms: int
    to_ms: int
    concurrent: int
    ended: bool


IdRow = dict[str, int]
"""Applied event ids -> offset of the record that applied them: one stored *part* of a livestream's minute."""

ID_PART_SIZE: Final = 512
"""Ids per stored part. A minute's ids are kept in parts so that a batch rewrites only the open (last) part, never
a hot livestream's whole minute (tens of thousands of ids at a sale's peak)."""


class IdBucket:
    """The applied ids of one livestream and event-time minute: all of them (for lookups) and the open part."""

    __slots__ = ("merged", "open", "parts")

    def __init__(self, merged: IdRow, open_part: IdRow, parts: int) -> None:
        self.merged = merged
        self.open = open_part
        self.parts = parts


class IdRows:
    """The dedup rows a fold reads and writes: loaded on first use, written back once per batch by the caller.

    ``load(channel_id, bucket, part)`` returns a stored part (empty if none); the state's ``id_parts`` says how
    many parts a minute has (1 if absent). ``changed``/``dropped`` name the parts to write back or delete, ``rows``
    holds the changed parts. Rows are kept apart from the channel state so a write touches only the open parts of
    the current minutes. ``cache`` (optional, kept by the caller across batches while it owns the partition)
    spares re-reading the minutes a livestream is in.
    """

    def __init__(
        self,
        load: Callable[[str, int, int], IdRow],
        cache: MutableMapping[tuple[str, int], IdBucket] | None = None,
        part_size: int = ID_PART_SIZE,
    ) -> None:
        self._load = load
        self._cache: MutableMapping[tuple[str, int], IdBucket] = cache if cache is not None else {}
        self.part_size = part_size
        self.rows: dict[tuple[str, int, int], IdRow] = {}
        self.changed: set[tuple[str, int, int]] = set()
        self.dropped: set[tuple[str, int, int]] = set()

    def bucket(self, state: ChannelState, bucket: int) -> IdBucket:
        key = (state.channel_id, bucket)
        found = self._cache.get(key)
        if found is None:
            parts = state.id_parts.get(bucket, 1)
            stored = [self._load(state.channel_id, bucket, part) for part in range(parts)]
            merged: IdRow = {}
            for part in stored:
                merged.update(part)
            found = self._cache[key] = IdBucket(merged, stored[-1], parts)
        return found

    def add(self, state: ChannelState, bucket: int, found: IdBucket, event_id: str, offset: int) -> None:
        """Record ``event_id`` as applied by the record at ``offset`` (in the open part; a full part is sealed)."""
        if len(found.open) >= self.part_size:
            found.parts += 1
            found.open = {}
            state.id_parts[bucket] = found.parts
        found.open[event_id] = offset
        found.merged[event_id] = offset
        key = (state.channel_id, bucket, found.parts - 1)
        self.rows[key] = found.open
        self.changed.add(key)

    def drop(self, state: ChannelState, bucket: int) -> None:
        """Forget a minute that left the dedup horizon: every part is deleted."""
        parts = state.id_parts.pop(bucket, 1)
        self._cache.pop((state.channel_id, bucket), None)
        for part in range(parts):
            key = (state.channel_id, bucket, part)
            self.rows.pop(key, None)
            self.changed.discard(key)
            self.dropped.add(key)


def no_stored_ids(channel_id: str, bucket: int, part: int) -> IdRow:
    return {}


OrderRow = dict[str, int]
"""Statuses counted for one order -> offset of the record that counted them; ``"ts"`` -> newest event time."""


class OrderBook:
    """Order statuses already counted, per (livestream, order id): loaded on first use, written back once per
    batch by the caller (``changed``). A row older than the horizon (its ``ts``) counts as empty."""

    def __init__(self, load: Callable[[str, str], OrderRow], horizon_ms: int = 86_400_000) -> None:
        self._load = load
        self.horizon_ms = horizon_ms
        self.rows: dict[tuple[str, str], OrderRow] = {}
        self.changed: set[tuple[str, str]] = set()
        self.in_record: set[tuple[str, str]] = set()
        """(order id, status) counted by the record being applied (cleared per record)."""

    def row(self, channel_id: str, order_id: str) -> OrderRow:
        key = (channel_id, order_id)
        found = self.rows.get(key)
        if found is None:
            found = self.rows[key] = self._load(channel_id, order_id)
        return found


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(ChannelState)


def encode_state(state: ChannelState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> ChannelState:
    return _decoder.decode(data)


def watermark(state: ChannelState, spec: WindowSpec) -> int:
    """Event-time watermark of a livestream: the newest event time seen (:attr:`ChannelState.watermark_ts_ms`:
    none counted further than ``watermark_lead_ms`` past its record's append time) minus allowed lateness (-1
    before any event). One event stamped far ahead therefore does not make the livestream's next events late."""
    newest = state.watermark_ts_ms if state.watermark_ts_ms >= 0 else state.max_ts_ms
    return newest - spec.lateness_ms if newest >= 0 else -1


def apply_record(
    state: ChannelState,
    events: list[Event],
    partition: int,
    offset: int,
    spec: WindowSpec,
    effects: FoldEffects,
    now_ms: int = -1,
    ids: IdRows | None = None,
    orders: OrderBook | None = None,
) -> bool:
    """Fold the events of one Kafka record into ``state``; False (and nothing changes) if already applied.

    A record is already applied when it comes from the state's partition at or below ``last_offset``: Kafka
    redelivered it after a restart or rebalance. Records must be applied in offset order per partition.

    With ``ids``, an event whose ``event_id`` was already applied (within ``dedup_horizon_ms`` of event time) is a
    client retry: counted in ``duplicate_events`` and nothing else. An id stored by a record *after* the state's
    ``last_offset`` does not count as applied: that state change was lost in a crash and is being redone.
    """
    if partition == state.partition and offset <= state.last_offset:
        state.redelivered_records += 1
        effects.redelivered_records += 1
        return False
    applied_through = state.last_offset if partition == state.partition else -1
    state.partition = partition
    state.last_offset = offset
    state.last_wall_ms = now_ms
    in_record: set[str] = set()
    channel_id = state.channel_id
    if orders is not None:
        orders.in_record.clear()
    for event in events:
        if ids is not None:
            event_id = event.event_id
            bucket = event.ts_ms // 60_000
            found = ids.bucket(state, bucket)
            seen_at = found.merged.get(event_id)
            if event_id in in_record or (seen_at is not None and seen_at <= applied_through):
                state.duplicate_events += 1
                effects.duplicate_events += 1
                continue
            in_record.add(event_id)
            ids.add(state, bucket, found, event_id, offset)
            if bucket not in state.id_buckets:
                state.id_buckets.append(bucket)
        if orders is not None and type(event) is Order and _order_seen(state, event, orders, offset, applied_through):
            state.duplicate_order_updates += 1
            effects.duplicate_orders += 1
            continue
        _apply_event(state, event, spec, effects, event.ts_ms if now_ms < 0 else now_ms + spec.watermark_lead_ms)
        effects.applied_events += 1
    if ids is not None:
        oldest = (state.max_ts_ms - spec.dedup_horizon_ms) // 60_000
        for bucket in [b for b in state.id_buckets if b < oldest]:
            state.id_buckets.remove(bucket)
            ids.drop(state, bucket)
    effects.touched.add(channel_id)
    return True


def _order_seen(state: ChannelState, order: Order, orders: OrderBook, offset: int, applied_through: int) -> bool:
    """True if ``order``'s status was already counted for its order id; otherwise marks it counted at ``offset``.

    A mark stored by a record after ``applied_through`` belongs to a state change lost in a crash: not counted
    (the record that made it is being redone). Two updates of one status inside one record: the second repeats.
    """
    row = orders.row(state.channel_id, order.order_id)
    seen_at = row.get(order.status)
    in_horizon = row.get("ts", -1) >= max(state.max_ts_ms, order.ts_ms) - orders.horizon_ms
    if (
        seen_at is not None
        and in_horizon
        and (seen_at <= applied_through or (order.order_id, order.status) in orders.in_record)
    ):
        return True
    orders.in_record.add((order.order_id, order.status))
    row[order.status] = offset
    row["ts"] = max(row.get("ts", -1), order.ts_ms)
    orders.changed.add((state.channel_id, order.order_id))
    return False


def _apply_event(state: ChannelState, event: Event, spec: WindowSpec, effects: FoldEffects, bound_ms: int) -> None:
    """Fold one event; its time moves the watermark (and reveals a silence before it) only up to ``bound_ms``."""
    ts = event.ts_ms
    if state.first_ts_ms < 0:
        state.first_ts_ms = ts
        state.campaign = event.campaign
    if ts > state.max_ts_ms:
        state.max_ts_ms = ts
    bounded, newest = min(ts, bound_ms), state.watermark_ts_ms
    if bounded > newest:
        if effects.gap_ms and newest >= 0 and bounded - newest >= effects.gap_ms:
            effects.gaps.append(Gap(state.channel_id, newest, bounded, state.concurrent, state.ended_ms >= 0))
        state.watermark_ts_ms = bounded
    state.last_ts_ms = ts
    if state.ended_ms >= 0 and ts > state.ended_ms:
        state.ended_ms = -1  # the livestream restarted
    if event.creator_id not in state.creators:
        state.creators.append(event.creator_id)
        state.creators.sort()

    totals = state.totals
    start = tumbling_start(ts, spec.size_ms)
    window: Counters | None
    if start <= state.closed_through_ms:
        window = None
        state.late_events += 1
        effects.late.append(event)
    else:
        window = state.windows.get(start)
        if window is None:
            window = state.windows[start] = Counters()

    kind = type(event)
    if kind is View:
        totals.views += 1
        state.concurrent += 1
        if state.concurrent > state.peak_concurrent:
            state.peak_concurrent = state.concurrent
        effects.viewers.setdefault(state.channel_id, []).append(event.user_id)
        if window is not None:
            window.views += 1
    elif kind is Leave:
        totals.leaves += 1
        state.concurrent -= 1
        if window is not None:
            window.leaves += 1
    elif kind is Like:
        assert isinstance(event, Like)
        totals.likes += event.count
        totals.like_events += 1
        if window is not None:
            window.likes += event.count
            window.like_events += 1
    elif kind is Comment:
        assert isinstance(event, Comment)
        totals.comments += 1
        if window is not None:
            window.comments += 1
            users = state.comment_users.get(start)
            if users is None:
                users = state.comment_users[start] = {}
            users[event.user_id] = users.get(event.user_id, 0) + 1
            texts = state.comment_texts.get(start)
            if texts is None:
                texts = state.comment_texts[start] = {}
            text = fold_text(event.text)
            texts[text] = texts.get(text, 0) + 1
    elif kind is Share:
        totals.shares += 1
        if window is not None:
            window.shares += 1
    elif kind is AddToCart:
        totals.add_to_carts += 1
        if window is not None:
            window.add_to_carts += 1
    elif kind is Order:
        assert isinstance(event, Order)
        _apply_order(totals, event)
        if window is not None:
            _apply_order(window, event)
    elif kind is LiveEnd:
        state.ended_ms = max(state.ended_ms, ts)


def _apply_order(counters: Counters, order: Order) -> None:
    status = order.status
    if status == "paid":
        counters.orders_paid += 1
        counters.items_sold += order.quantity
        counters.gmv_vnd += order.amount_vnd
    elif status == "placed":
        counters.orders_placed += 1
    elif status == "cancelled":
        counters.orders_cancelled += 1
    else:
        counters.orders_refunded += 1


def close_windows(state: ChannelState, watermark_ms: int, spec: WindowSpec) -> list[FinalWindow]:
    """Remove and return every window closed at ``watermark_ms`` (``watermark >= end + grace``), oldest first.

    Returns the closed tumbling windows and, for every tumbling-window end that passed, the hopping window of
    ``hop_windows`` tumbling windows ending there (if it has any event). Afterwards events for the closed
    windows are late. Closing is driven by event time (or by the caller's idle timeout), never by faust's
    wall-clock expiry, and it is part of the persisted state, so it survives restarts.
    """
    size = spec.size_ms
    horizon = watermark_ms - size - spec.grace_ms  # windows with start <= horizon are closed
    old_hop = max(state.closed_through_ms, state.hop_through_ms)
    if horizon < 0 or horizon - horizon % size <= state.closed_through_ms:
        return []
    new_through = horizon - horizon % size
    finals: list[FinalWindow] = []
    for start in sorted(s for s in state.windows if s <= new_through):
        counters = state.windows.pop(start)
        users = state.comment_users.pop(start, {})
        texts = state.comment_texts.pop(start, {})
        finals.append(FinalWindow(start, size, counters, users, texts))
        state.recent_closed[start] = counters
    hop = spec.hop_windows
    if hop > 1:
        ends = {start + size * j for start in state.recent_closed for j in range(1, hop + 1)}
        low = old_hop + size if old_hop >= 0 else -1
        for end in sorted(e for e in ends if low < e <= new_through + size):
            total = Counters()
            for start in range(end - hop * size, end, size):
                part = state.recent_closed.get(start)
                if part is not None:
                    total.merge(part)
            finals.append(FinalWindow(end - hop * size, hop * size, total))
        keep_from = max(old_hop, new_through) - (hop - 2) * size
        for start in [s for s in state.recent_closed if s < keep_from]:
            del state.recent_closed[start]
    else:
        state.recent_closed.clear()
    # An idle or ended close (a watermark past the newest event) closes the windows holding events and emits the
    # hopping windows reaching past them, but minutes after the newest event stay open: a livestream that comes
    # back (a restart after ``live_end``, or after a pause) counts in its 1-minute windows again.
    newest = state.max_ts_ms - state.max_ts_ms % size if state.max_ts_ms >= 0 else new_through
    state.closed_through_ms = max(state.closed_through_ms, min(new_through, newest))
    state.hop_through_ms = max(old_hop, new_through)
    return finals


def idle_watermark(state: ChannelState, spec: WindowSpec, now_ms: int) -> int:
    """Watermark of a livestream, taking wall-clock idleness into account.

    While records keep coming it is the ordinary :func:`watermark`. Once no record was applied for
    ``idle_timeout_ms`` of wall-clock time (a stream that ended, or paused), the watermark moves past every window
    that contains the newest event, tumbling and hopping, plus grace: the stream's last windows close and are
    emitted. Events that arrive for them afterwards are late.
    """
    base = watermark(state, spec)
    if state.max_ts_ms < 0 or state.last_wall_ms < 0 or now_ms - state.last_wall_ms < spec.idle_timeout_ms:
        return base
    return max(base, state.max_ts_ms + spec.size_ms * max(1, spec.hop_windows) + spec.grace_ms)


def ended_watermark(state: ChannelState, spec: WindowSpec, clock_ms: int) -> int:
    """Watermark of a livestream that ended (``live_end``), given its partition's event-time clock.

    Once the partition's newest event time is ``grace_ms`` past the end, no more events of the livestream are
    expected: every window holding its events closes, as after an idle timeout, but driven by event time so the
    campaign windows need not wait for the wall clock. Otherwise the ordinary :func:`watermark`.
    """
    base = watermark(state, spec)
    if state.ended_ms < 0 or clock_ms < state.ended_ms + spec.grace_ms:
        return base
    return max(base, state.max_ts_ms + spec.size_ms * max(1, spec.hop_windows) + spec.grace_ms)


def average_order_value(counters: Counters) -> int:
    """GMV per paid order in whole VND (floor), 0 without orders."""
    return counters.gmv_vnd // counters.orders_paid if counters.orders_paid else 0


def conversion_rate(orders_paid: int, unique_viewers: int) -> float:
    """Paid orders per unique viewer (0.0 without viewers). A ratio for display, not money."""
    return orders_paid / unique_viewers if unique_viewers else 0.0
