"""Per-livestream aggregation state and the fold of events into it.

One :class:`ChannelState` holds everything that is known about a livestream: stream-to-date counters, concurrent
viewers, the open 1-minute event-time windows, the watermark, and the Kafka offset of the last record applied.
It is stored as *one* table value, so a state and the offset it reflects are always persisted together; after a
crash Kafka redelivers records at or below ``last_offset`` and :func:`apply_record` skips them, which keeps every
counter exact under at-least-once delivery.

Semantics:
- a paid order is an ``order`` event with status ``paid``; GMV is the sum of their ``amount_vnd`` (gross: a later
  refund is counted in ``orders_refunded`` and does not lower GMV or the paid count);
- concurrent viewers = views - leaves so far; ``peak_concurrent`` is its maximum over the stream;
- windows are ``[start, start + size)`` by event time; a window closes when the watermark (max event time seen minus
  allowed lateness) reaches ``end + grace``; an event for a closed window is *late*: it still counts stream-to-date,
  is counted in ``late_events`` and returned to the caller for the late path, but changes no window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import msgspec

from schemas.events import AddToCart, Comment, Event, Leave, Like, Order, Share, View
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
    late_events: int = 0
    redelivered_records: int = 0


@dataclass(frozen=True)
class WindowSpec:
    """Tumbling window length, grace and allowed lateness, in milliseconds."""

    size_ms: int = 60_000
    grace_ms: int = 10_000
    lateness_ms: int = 0


@dataclass
class FoldEffects:
    """What a fold changed, for the sinks: touched channels, new viewers (for HyperLogLogs), late events."""

    touched: set[str] = field(default_factory=set)
    viewers: dict[str, list[str]] = field(default_factory=dict)
    late: list[Event] = field(default_factory=list)
    redelivered_records: int = 0
    applied_events: int = 0


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(ChannelState)


def encode_state(state: ChannelState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> ChannelState:
    return _decoder.decode(data)


def watermark(state: ChannelState, spec: WindowSpec) -> int:
    """Event-time watermark of a livestream: max event time seen minus allowed lateness (-1 before any event)."""
    return state.max_ts_ms - spec.lateness_ms if state.max_ts_ms >= 0 else -1


def apply_record(
    state: ChannelState,
    events: list[Event],
    partition: int,
    offset: int,
    spec: WindowSpec,
    effects: FoldEffects,
) -> bool:
    """Fold the events of one Kafka record into ``state``; False (and nothing changes) if already applied.

    A record is already applied when it comes from the state's partition at or below ``last_offset``: Kafka
    redelivered it after a restart or rebalance. Records must be applied in offset order per partition.
    """
    if partition == state.partition and offset <= state.last_offset:
        state.redelivered_records += 1
        effects.redelivered_records += 1
        return False
    state.partition = partition
    state.last_offset = offset
    for event in events:
        _apply_event(state, event, spec, effects)
    effects.applied_events += len(events)
    effects.touched.add(state.channel_id)
    return True


def _apply_event(state: ChannelState, event: Event, spec: WindowSpec, effects: FoldEffects) -> None:
    ts = event.ts_ms
    if state.first_ts_ms < 0:
        state.first_ts_ms = ts
        state.campaign = event.campaign
    if ts > state.max_ts_ms:
        state.max_ts_ms = ts
    state.last_ts_ms = ts
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
        totals.comments += 1
        if window is not None:
            window.comments += 1
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


def close_windows(state: ChannelState, watermark_ms: int, spec: WindowSpec) -> list[tuple[int, Counters]]:
    """Remove and return, oldest first, every open window closed at ``watermark_ms`` (``>= end + grace``).

    Afterwards events for those windows are late. Closing is driven by event time (or by the caller's idle
    timeout), never by faust's wall-clock expiry, and it is part of the persisted state, so it survives restarts.
    """
    horizon = watermark_ms - spec.size_ms - spec.grace_ms  # windows with start <= horizon are closed
    if horizon <= state.closed_through_ms:
        return []
    closed = sorted((start, counters) for start, counters in state.windows.items() if start <= horizon)
    for start, _ in closed:
        del state.windows[start]
    state.closed_through_ms = horizon - horizon % spec.size_ms if horizon >= 0 else state.closed_through_ms
    return closed


def average_order_value(counters: Counters) -> int:
    """GMV per paid order in whole VND (floor), 0 without orders."""
    return counters.gmv_vnd // counters.orders_paid if counters.orders_paid else 0


def conversion_rate(orders_paid: int, unique_viewers: int) -> float:
    """Paid orders per unique viewer (0.0 without viewers). A ratio for display, not money."""
    return orders_paid / unique_viewers if unique_viewers else 0.0
