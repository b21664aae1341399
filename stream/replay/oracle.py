"""Ground truth for a replay: exact totals counted straight from an event sequence.

This is the independent path tests compare the pipeline against. It only *counts* what it is given:

- a view adds one view and one concurrent viewer, a leave removes one concurrent viewer;
- ``likes`` sums ``Like.count`` (taps), ``like_events`` counts like events;
- an order event counts in ``orders_<status>``; ``orders_paid``, ``items_sold`` (sum of quantity) and
  ``gmv_vnd`` (sum of ``amount_vnd``) count ``paid`` events only. GMV is gross: a refund is counted in
  ``orders_refunded`` and lowers neither GMV nor the paid count;
- ``peak_concurrent`` is the maximum, over the channel's events *in the order given*, of views-so-far minus
  leaves-so-far (0 if that is never positive); ``concurrent`` is views minus leaves at the end;
- windows are 1-minute tumbling windows ``[start, start + 60000)`` by event time, aligned to the epoch;
- ``first_ts_ms`` / ``last_ts_ms`` are the smallest / largest event time of the channel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from schemas.events import AddToCart, Comment, Event, Leave, Like, LiveEnd, Order, Share, View

WINDOW_MS: Final = 60_000

COUNTER_FIELDS: Final = (
    "views",
    "leaves",
    "comments",
    "likes",
    "like_events",
    "shares",
    "add_to_carts",
    "orders_placed",
    "orders_paid",
    "orders_cancelled",
    "orders_refunded",
    "items_sold",
    "gmv_vnd",
)
"""Additive counters shared by :class:`ChannelTotals` and :class:`WindowTotals`, in this order."""

(
    _VIEWS,
    _LEAVES,
    _COMMENTS,
    _LIKES,
    _LIKE_EVENTS,
    _SHARES,
    _CARTS,
    _PLACED,
    _PAID,
    _CANCELLED,
    _REFUNDED,
    _ITEMS,
    _GMV,
) = range(len(COUNTER_FIELDS))
_NO_WINDOW: Final = -(1 << 62)
_STATUS_INDEX: Final = {"placed": _PLACED, "paid": _PAID, "cancelled": _CANCELLED, "refunded": _REFUNDED}


@dataclass(frozen=True)
class WindowTotals:
    """Counters of one channel over one 1-minute tumbling window."""

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


@dataclass(frozen=True)
class ChannelTotals:
    """Stream-to-date totals of one channel (livestream)."""

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
    unique_viewers: int = 0
    """Exact number of distinct ``user_id`` with a view in this channel."""
    peak_concurrent: int = 0
    concurrent: int = 0
    creators: frozenset[str] = frozenset()
    """Every ``creator_id`` seen on this channel's events."""
    first_ts_ms: int = -1
    last_ts_ms: int = -1


@dataclass
class Oracle:
    """Exact expected results for an event sequence (see the module docstring for the semantics)."""

    channels: dict[str, ChannelTotals]
    windows: dict[tuple[str, int], WindowTotals]
    """Keyed by ``(channel_id, window start ms)``; only windows with at least one event."""
    views: int
    orders: int
    """Paid orders (order events with status ``paid``)."""
    gmv_vnd: int
    livestreams: int
    """Channels with at least one event."""
    creators: int
    """Distinct ``creator_id`` over all events."""
    unique_viewers: int
    """Distinct ``user_id`` with a view, over all channels."""
    events_by_type: dict[str, int]
    """Event count per ``type`` tag (view, leave, comment, like, share, add_to_cart, order, live_end)."""

    def summary(self) -> dict[str, int]:
        """Campaign headline figures: views, paid orders, GMV, livestreams, creators."""
        return {
            "views": self.views,
            "orders": self.orders,
            "gmv_vnd": self.gmv_vnd,
            "livestreams": self.livestreams,
            "creators": self.creators,
        }

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> Oracle:
        """Count ``events`` (in the order given) into an oracle."""
        builder = OracleBuilder()
        builder.add_all(events)
        return builder.build()


class _Channel:
    """Mutable per-channel accumulator."""

    __slots__ = ("counters", "creators", "current", "first", "last", "peak", "users", "windows")

    def __init__(self) -> None:
        self.counters = [0] * len(COUNTER_FIELDS)
        self.users: set[str] = set()
        self.creators: set[str] = set()
        self.current = 0
        self.peak = 0
        self.first = -1
        self.last = -1
        self.windows: dict[int, list[int]] = {}


class OracleBuilder:
    """Incremental :class:`Oracle`: feed events with :meth:`add` / :meth:`add_all`, then :meth:`build`."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        self._users: set[str] = set()
        self._types: dict[str, int] = {}
        self._counted_orders: set[tuple[str, str, str]] = set()

    def add(self, event: Event) -> None:
        """Count one event."""
        self.add_all((event,))

    def add_all(self, events: Iterable[Event]) -> None:
        """Count events in order (fast path: consecutive events of one channel and minute share lookups)."""
        channels = self._channels
        all_users = self._users
        types = self._types
        view_t, leave_t, like_t, comment_t = View, Leave, Like, Comment
        share_t, cart_t, order_t, end_t = Share, AddToCart, Order, LiveEnd
        status_index = _STATUS_INDEX
        counted_orders = self._counted_orders
        cid: str | None = None
        ch = _Channel()
        counters: list[int] = ch.counters
        users: set[str] = ch.users
        creators: set[str] = ch.creators
        windows: dict[int, list[int]] = ch.windows
        current = peak = 0
        first = last = -1
        wstart = _NO_WINDOW
        wc: list[int] = counters
        n_view = n_leave = n_like = n_comment = n_share = n_cart = n_order = n_end = 0
        for ev in events:
            if ev.channel_id != cid:
                if cid is not None:
                    ch.current, ch.peak, ch.first, ch.last = current, peak, first, last
                cid = ev.channel_id
                found = channels.get(cid)
                if found is None:
                    found = channels[cid] = _Channel()
                ch = found
                counters, users, creators, windows = ch.counters, ch.users, ch.creators, ch.windows
                current, peak, first, last = ch.current, ch.peak, ch.first, ch.last
                wstart = _NO_WINDOW
            ts = ev.ts_ms
            if ts - wstart >= WINDOW_MS or ts < wstart:
                wstart = ts - ts % WINDOW_MS
                got = windows.get(wstart)
                if got is None:
                    got = windows[wstart] = [0] * len(COUNTER_FIELDS)
                wc = got
                if first < 0 or ts < first:
                    first = ts
            elif ts < first:
                first = ts
            if ts > last:
                last = ts
            creators.add(ev.creator_id)
            t = type(ev)
            if t is view_t:
                n_view += 1
                counters[_VIEWS] += 1
                wc[_VIEWS] += 1
                current += 1
                if current > peak:
                    peak = current
                users.add(ev.user_id)
                all_users.add(ev.user_id)
            elif t is leave_t:
                n_leave += 1
                counters[_LEAVES] += 1
                wc[_LEAVES] += 1
                current -= 1
            elif t is like_t:
                assert isinstance(ev, Like)
                n_like += 1
                counters[_LIKE_EVENTS] += 1
                wc[_LIKE_EVENTS] += 1
                counters[_LIKES] += ev.count
                wc[_LIKES] += ev.count
            elif t is comment_t:
                n_comment += 1
                counters[_COMMENTS] += 1
                wc[_COMMENTS] += 1
            elif t is order_t:
                assert isinstance(ev, Order)
                n_order += 1
                once = (cid, ev.order_id, ev.status)
                if once in counted_orders:
                    continue  # each status counts once per order (a re-sent payment webhook)
                counted_orders.add(once)
                i = status_index[ev.status]
                counters[i] += 1
                wc[i] += 1
                if i == _PAID:
                    counters[_ITEMS] += ev.quantity
                    wc[_ITEMS] += ev.quantity
                    counters[_GMV] += ev.amount_vnd
                    wc[_GMV] += ev.amount_vnd
            elif t is cart_t:
                n_cart += 1
                counters[_CARTS] += 1
                wc[_CARTS] += 1
            elif t is share_t:
                n_share += 1
                counters[_SHARES] += 1
                wc[_SHARES] += 1
            elif t is end_t:
                n_end += 1
            else:
                raise TypeError(f"not an event: {ev!r}")
        if cid is not None:
            ch.current, ch.peak, ch.first, ch.last = current, peak, first, last
        for name, n in (
            ("view", n_view),
            ("leave", n_leave),
            ("comment", n_comment),
            ("like", n_like),
            ("share", n_share),
            ("add_to_cart", n_cart),
            ("order", n_order),
            ("live_end", n_end),
        ):
            if n:
                types[name] = types.get(name, 0) + n

    def build(self) -> Oracle:
        """The oracle of everything added so far."""
        channels: dict[str, ChannelTotals] = {}
        windows: dict[tuple[str, int], WindowTotals] = {}
        creators: set[str] = set()
        views = orders = gmv = 0
        for cid, ch in self._channels.items():
            c = ch.counters
            channels[cid] = ChannelTotals(
                **dict(zip(COUNTER_FIELDS, c, strict=True)),
                unique_viewers=len(ch.users),
                peak_concurrent=ch.peak,
                concurrent=ch.current,
                creators=frozenset(ch.creators),
                first_ts_ms=ch.first,
                last_ts_ms=ch.last,
            )
            for start in sorted(ch.windows):
                windows[(cid, start)] = WindowTotals(**dict(zip(COUNTER_FIELDS, ch.windows[start], strict=True)))
            creators |= ch.creators
            views += c[_VIEWS]
            orders += c[_PAID]
            gmv += c[_GMV]
        return Oracle(
            channels=channels,
            windows=windows,
            views=views,
            orders=orders,
            gmv_vnd=gmv,
            livestreams=len(channels),
            creators=len(creators),
            unique_viewers=len(self._users),
            events_by_type=dict(self._types),
        )
