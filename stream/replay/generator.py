"""Deterministic synthetic replay of the fair described by a :class:`FairProfile`.

``FairReplay(profile, seed)`` plans the fair up front (cheap: livestream schedule, hosts, views per
livestream-minute, every order) and then generates events lazily, one fair minute at a time. The same
``(profile, seed)`` always yields the same events, in the same order (one ``random.Random(seed)``, no wall clock).

Guarantees:

- exactly ``profile.views`` views and exactly ``profile.paid_orders`` paid orders whose ``amount_vnd`` sum to
  exactly ``profile.gmv_vnd``; every one of ``profile.livestreams`` channels and ``profile.creators`` creators
  appears in at least one event;
- every event lies inside its livestream's span ``[start_ms, end_ms)``, itself inside the fair;
- a leave always follows its view (a leave that would fall at or after the livestream's end is not emitted);
- each livestream's last event is its ``live_end`` at ``end_ms - 1``;
  comments, likes, shares and carts come from a viewer while present; an order emits ``placed`` then ``paid`` or
  ``cancelled`` (same ``order_id``), and some paid orders later ``refunded``, all strictly increasing in time;
- within a :class:`MinuteSlice`, a channel's events are sorted by ``ts_ms`` (ties keep generation order), so each
  channel's events are time-ordered across the whole replay.

Pending events (leaves, later engagement, order follow-ups) wait in per-channel calendar buckets (one list per
minute of the livestream), which is a cheaper equivalent of a per-channel heap here.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Final

from schemas.events import AddToCart, Comment, Event, Leave, Like, LiveEnd, Order, OrderStatus, Share, View
from stream.replay.oracle import Oracle, OracleBuilder
from stream.replay.profile import (
    LATEST_START_BEFORE_END_MINUTES,
    MAX_ORDER_VND,
    MIN_STREAM_MINUTES,
    FairProfile,
    Product,
)

MINUTE_MS: Final = 60_000
HOST_BLOCK_MINUTES: Final = 15
"""Co-hosts take turns on air in blocks of this many minutes (first host first)."""
REWATCH_SHARE: Final = 0.10
"""Share of views by someone who viewed the same livestream shortly before."""
REWATCH_RING: Final = 256
WATCH_MIN_MS: Final = 3_000
WATCH_PARETO_XM_MS: Final = 30_000
WATCH_PARETO_ALPHA: Final = 1.3
STAYER_SHARE: Final = 0.12
STAYER_MEAN_MS: Final = 25 * MINUTE_MS
"""Watch time = 3 s + Pareto(30 s, 1.3) (heavy-tailed, mean about 2.2 minutes) for most viewers, and
3 s + exponential(mean 25 minutes) for the 12% who stay: overall mean about 5 minutes."""
ZIPF_EXPONENT: Final = 0.9
ORDER_TAIL_MS: Final = 30_000
"""An order is placed at least this long before its livestream ends, so its follow-ups fit inside the span."""
BUYER_VIEW_TAIL_MS: Final = 40_000
"""A buyer's view happens at least this long before the livestream ends."""
COMMENT_REPEAT: Final = 0.3
LIKE_REPEAT: Final = 0.5

COMMENT_TEXTS: Final = (
    "Vải thiều Lục Ngạn ngon quá!",
    "Ship về Hà Nội mất mấy ngày shop ơi?",
    "Mỳ Chũ nấu gì ngon ạ?",
    "Chốt 2 hộp vải nhé",
    "Giá bao nhiêu vậy shop?",
    "Đông trùng hạ thảo dùng thế nào ạ?",
    "Gà đồi Yên Thế còn không shop?",
    "Bắc Giang quê mình đây rồi",
    "Lên đơn cho mình với",
    "Mật ong vải thơm lắm",
    "Vải năm nay ngọt hơn năm ngoái",
    "❤️❤️❤️",
    "Có freeship không ạ?",
    "Chào các bạn từ Sài Gòn",
)

_by_ts: Final = attrgetter("ts_ms")


@dataclass(frozen=True)
class StreamPlan:
    """One livestream: channel, hosts (one or two; co-hosts alternate on air) and span ``[start_ms, end_ms)``."""

    index: int
    channel_id: str
    hosts: tuple[str, ...]
    start_ms: int
    end_ms: int

    def host_at(self, ts_ms: int) -> str:
        """The host on air at ``ts_ms``."""
        if len(self.hosts) == 1:
            return self.hosts[0]
        return self.hosts[((ts_ms - self.start_ms) // (HOST_BLOCK_MINUTES * MINUTE_MS)) % len(self.hosts)]


@dataclass(frozen=True)
class MinuteSlice:
    """One fair minute ``[start_ms, start_ms + 60000)``: per channel (in channel order), its events by ``ts_ms``."""

    start_ms: int
    by_channel: dict[str, list[Event]]


@dataclass(frozen=True)
class _PlannedOrder:
    order_id: str
    product_id: str
    quantity: int
    amount_vnd: int
    paid: bool
    refunded: bool


class _Live:
    """Generation state of one livestream: pending events per minute, recent viewers, event sequence."""

    __slots__ = ("buckets", "ring", "seq")

    def __init__(self, length: int) -> None:
        self.buckets: list[list[Event]] = [[] for _ in range(length)]
        self.ring: list[int] = []
        self.seq = 0


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder; ties to the lower index).

    The result sums to exactly ``total``; a zero weight always gets zero.
    """
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("total and weights must be >= 0")
    denominator = sum(weights)
    if total == 0:
        return [0] * len(weights)
    if denominator <= 0:
        raise ValueError("weights must not all be zero")
    shares = [total * w // denominator for w in weights]
    left = total - sum(shares)
    if left:
        remainders = [total * w % denominator for w in weights]
        for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
            shares[i] += 1
    return shares


def systematic(total: int, weights: Sequence[int], rng: random.Random) -> list[int]:
    """Split ``total`` in proportion to ``weights`` by systematic sampling (one random offset, equal steps).

    The result sums to exactly ``total``; each share is the floor or the ceiling of its quota, a zero weight gets
    zero, and unlike largest remainder small quotas are spread out instead of going to the largest weights.
    """
    denominator = sum(weights)
    counts = [0] * len(weights)
    if total == 0:
        return counts
    if denominator <= 0 or any(w < 0 for w in weights):
        raise ValueError("weights must be >= 0 and not all zero")
    cumulative = list(itertools.accumulate(weights))
    offset = rng.randrange(denominator)
    for j in range(total):
        counts[bisect.bisect_right(cumulative, (j * denominator + offset) // total)] += 1
    return counts


def fit_total(values: Sequence[int], target: int, low: int = 1, high: int = MAX_ORDER_VND) -> list[int]:
    """Scale positive ``values`` to integers in ``[low, high]`` summing to exactly ``target`` (proportionally)."""
    n = len(values)
    if not n * low <= target <= n * high:
        raise ValueError(f"cannot fit {n} values in [{low}, {high}] to {target}")
    out = [min(high, max(low, v)) for v in apportion(target, values)]
    diff = target - sum(out)
    order = sorted(range(n), key=lambda i: (-out[i], i))
    for i in order if diff else ():
        step = min(diff, high - out[i]) if diff > 0 else -min(-diff, out[i] - low)
        out[i] += step
        diff -= step
        if not diff:
            break
    return out


def _table(weights: Sequence[int], size: int) -> list[int]:
    """A lookup table of ``size`` indices, index ``i`` repeated in proportion to ``weights[i]``."""
    table: list[int] = []
    for i, k in enumerate(apportion(size, weights)):
        table.extend([i] * k)
    return table


def _viewer_pool(views: int, unique_share: float) -> int:
    """Pool size so that uniform draws give about ``unique_share * views`` distinct viewers."""
    draws = (1.0 - REWATCH_SHARE) * views
    want = min(unique_share * views / draws, 0.999)
    lo, hi = 1e-9, 60.0  # solve (1 - exp(-r)) / r = want for r = draws / pool; decreasing in r
    for _ in range(100):
        mid = (lo + hi) / 2
        if (1.0 - math.exp(-mid)) / mid > want:
            lo = mid
        else:
            hi = mid
    return max(1, round(draws / lo))


class FairReplay:
    """A deterministic replay of ``profile`` for ``seed``; iterate :meth:`minutes` or :meth:`iter_events`."""

    def __init__(self, profile: FairProfile, seed: int) -> None:
        profile.validate()
        self.profile: Final = profile
        self.seed: Final = seed
        rng = random.Random(seed)
        self.streams: tuple[StreamPlan, ...] = self._plan_streams(rng)
        self._views: list[list[int]] = self._plan_views(rng)
        self._orders: list[list[list[_PlannedOrder]]] = self._plan_orders(rng)
        self.viewer_pool: Final = _viewer_pool(profile.views, profile.unique_viewer_share)
        self._state = rng.getstate()
        self._oracle: Oracle | None = None

    # ----------------------------------------------------------------------------------------------- planning

    def _plan_streams(self, rng: random.Random) -> tuple[StreamPlan, ...]:
        p = self.profile
        fair_minutes = p.minutes
        latest = fair_minutes - LATEST_START_BEFORE_END_MINUTES
        spans = [(0, fair_minutes)]  # the host channel runs the whole fair
        for _ in range(p.livestreams - 1):
            start = int(latest * rng.random() ** 1.3 + 0.5)
            room = fair_minutes - start - MIN_STREAM_MINUTES
            spans.append((start, start + MIN_STREAM_MINUTES + int(room * rng.random() ** 0.8 + 0.5)))
        spans.sort(key=lambda s: (s[0], -s[1]))
        co_hosted = set(rng.sample(range(p.livestreams), p.co_hosted))
        width = max(2, len(str(p.creators)))
        names = [f"creator-{i:0{width}d}" for i in range(1, p.creators + 1)]
        rng.shuffle(names)
        streams: list[StreamPlan] = []
        for i, (a, b) in enumerate(spans):
            hosts = (names.pop(), names.pop()) if i in co_hosted else (names.pop(),)
            start_ms, end_ms = p.start_ms + a * MINUTE_MS, p.start_ms + b * MINUTE_MS
            streams.append(StreamPlan(i + 1, f"ocop-live-{i + 1:02d}", hosts, start_ms, end_ms))
        return tuple(streams)

    def _plan_views(self, rng: random.Random) -> list[list[int]]:
        """Views per livestream minute: Zipf-like popularity, ramp-peak-decline curve, exact total."""
        p = self.profile
        ranks = list(range(1, len(self.streams) + 1))
        rng.shuffle(ranks)
        popularity = []
        for st, rank in zip(self.streams, ranks, strict=True):
            share = rank**-ZIPF_EXPONENT * math.sqrt((st.end_ms - st.start_ms) / (p.end_ms - p.start_ms))
            popularity.append(max(1, round(share * 1e9)))
        per_stream = [2 + n for n in apportion(p.views - 2 * len(self.streams), popularity)]
        views: list[list[int]] = []
        for st, total in zip(self.streams, per_stream, strict=True):
            length = (st.end_ms - st.start_ms) // MINUTE_MS
            peak = 0.15 + 0.45 * rng.random()
            sharpness = 1.5 + 2.0 * rng.random()
            weights = []
            for t in range(length):
                x = (t + 0.5) / length / peak
                curve = x**sharpness * math.exp(sharpness * (1.0 - x))
                weights.append(1 + round((0.04 + curve) * (0.75 + 0.5 * rng.random()) * 1e6))
            reserved = [0] if len(st.hosts) == 1 else [0, HOST_BLOCK_MINUTES]
            counts = apportion(total - len(reserved), weights)
            for t in reserved:
                counts[t] += 1  # the first minute of each host's first turn: every host is seen
            views.append(counts)
        return views

    def _plan_orders(self, rng: random.Random) -> list[list[list[_PlannedOrder]]]:
        """Every placed order, by livestream minute: product, quantity, final status and exact paid amounts."""
        p = self.profile
        paid_total = p.paid_orders
        cancelled_total = round(paid_total * p.cancelled_share / (1.0 - p.cancelled_share))
        refunded_total = min(paid_total, round(paid_total * p.refunded_share))
        placed_total = paid_total + cancelled_total
        cells: list[tuple[int, int]] = []
        weights: list[int] = []
        conversion = [50 + int(100 * rng.random()) for _ in self.streams]
        fair_minutes = p.minutes
        for minute in range(fair_minutes):  # cell order = generation order: minute, then channel
            for si, st in enumerate(self.streams):
                t = minute - (st.start_ms - p.start_ms) // MINUTE_MS
                if 0 <= t < len(self._views[si]):
                    cells.append((si, t))
                    weights.append(self._views[si][t] * conversion[si])
        per_cell = systematic(placed_total, weights, rng)
        product_table = _table([pr.popularity for pr in p.products], 1000)
        quantity_table = [1] * 82 + [2] * 14 + [3] * 3 + [5]
        drafts: list[tuple[Product, int, bool, bool]] = []
        cancel_left, refund_left, paid_left = cancelled_total, refunded_total, paid_total
        for remaining in range(placed_total, 0, -1):
            product = p.products[product_table[int(rng.random() * len(product_table))]]
            quantity = quantity_table[int(rng.random() * len(quantity_table))]
            cancelled = rng.random() * remaining < cancel_left  # exact count, uniformly spread
            refunded = False
            if cancelled:
                cancel_left -= 1
            else:
                refunded = rng.random() * paid_left < refund_left
                refund_left -= refunded
                paid_left -= 1
            drafts.append((product, quantity, not cancelled, refunded))
        natural = [pr.price_vnd * q for pr, q, paid, _ in drafts if paid]
        fitted = iter(fit_total(natural, p.gmv_vnd))
        planned = [
            _PlannedOrder(
                f"ord-{j + 1:06d}", pr.product_id, q, next(fitted) if paid else pr.price_vnd * q, paid, refunded
            )
            for j, (pr, q, paid, refunded) in enumerate(drafts)
        ]
        orders: list[list[list[_PlannedOrder]]] = [[[] for _ in counts] for counts in self._views]
        it = iter(planned)
        for (si, t), k in zip(cells, per_cell, strict=True):
            orders[si][t].extend(next(it) for _ in range(k))
        return orders

    # --------------------------------------------------------------------------------------------- generation

    @property
    def oracle(self) -> Oracle:
        """Exact expected results of the events emitted; only after a full iteration (else ``RuntimeError``)."""
        if self._oracle is None:
            raise RuntimeError("the replay has not been fully iterated yet")
        return self._oracle

    def iter_events(self) -> Iterator[Event]:
        """Every event, in slice order (minute by minute, channel by channel, by time within a channel)."""
        for minute in self.minutes():
            for events in minute.by_channel.values():
                yield from events

    def minutes(self) -> Iterator[MinuteSlice]:
        """One :class:`MinuteSlice` per fair minute, in time order; lazily generated. Sets :attr:`oracle` at the end."""
        p = self.profile
        rng = random.Random()
        rng.setstate(self._state)
        rand = rng.random
        builder = OracleBuilder()
        campaign = p.campaign
        products = p.products
        product_table = _table([pr.popularity for pr in products], 1000)
        n_products = len(product_table)
        taps = [c + 1 for c in _table([round(1e6 * (c + 1) ** -1.4) for c in range(30)], 1000)]
        n_taps = len(taps)
        texts = COMMENT_TEXTS
        n_texts = len(texts)
        pool = self.viewer_pool
        user_format = f"u%0{max(7, len(str(pool)))}d"
        placed_total = sum(len(cell) for stream in self._orders for cell in stream)
        cart_p = min(1.0, max(0.0, p.add_to_carts_per_paid_order * p.paid_orders - placed_total) / p.views)
        comment_p = p.comments_per_view * (1.0 - COMMENT_REPEAT)
        like_p = p.like_events_per_view * (1.0 - LIKE_REPEAT)
        share_p = p.shares_per_view
        neg_inv_alpha = -1.0 / WATCH_PARETO_ALPHA
        log = math.log
        block_ms = HOST_BLOCK_MINUTES * MINUTE_MS

        minute_ms, ring_size, rewatch_share, buyer_tail = MINUTE_MS, REWATCH_RING, REWATCH_SHARE, BUYER_VIEW_TAIL_MS
        watch_min, watch_xm, stayer_share, stayer_mean = WATCH_MIN_MS, WATCH_PARETO_XM_MS, STAYER_SHARE, STAYER_MEAN_MS
        comment_repeat, like_repeat, to_int = COMMENT_REPEAT, LIKE_REPEAT, int
        new_view, new_leave, new_comment, new_like = View, Leave, Comment, Like
        new_share, new_addtocart = Share, AddToCart
        live: dict[int, _Live] = {}
        for minute in range(p.minutes):
            m0 = p.start_ms + minute * minute_ms
            by_channel: dict[str, list[Event]] = {}
            for si, st in enumerate(self.streams):
                s0, end = st.start_ms, st.end_ms
                if not s0 <= m0 < end:
                    continue
                t = (m0 - s0) // minute_ms
                state = live.get(si)
                if state is None:
                    state = live[si] = _Live((end - s0) // minute_ms)
                buckets = state.buckets
                ring = state.ring
                seq = state.seq
                cid = st.channel_id
                prefix = f"{st.index:02d}-"
                hosts = st.hosts
                single = len(hosts) == 1
                host0 = hosts[0]
                n_hosts = len(hosts)
                on_air = st.host_at(m0)
                current = buckets[t]
                cell_orders = self._orders[si][t]
                n_views = self._views[si][t]
                n_buyers = min(len(cell_orders), n_views)
                buyer_span = min(minute_ms, end - buyer_tail - m0)
                for i in range(n_views):
                    ts = m0 + to_int(rand() * (buyer_span if i < n_buyers else minute_ms))
                    if ring and rand() < rewatch_share:
                        u = ring[to_int(rand() * len(ring))]
                    else:
                        u = to_int(rand() * pool)
                        if len(ring) < ring_size:
                            ring.append(u)
                        else:
                            ring[to_int(rand() * ring_size)] = u
                    uid = user_format % u
                    seq += 1
                    current.append(
                        new_view(
                            event_id=f"{prefix}{seq:x}",
                            channel_id=cid,
                            creator_id=on_air,
                            campaign=campaign,
                            user_id=uid,
                            ts_ms=ts,
                        )
                    )
                    if rand() < stayer_share:
                        leave = ts + watch_min + to_int(-stayer_mean * log(1.0 - rand()))
                    else:
                        leave = ts + watch_min + to_int(watch_xm * (1.0 - rand()) ** neg_inv_alpha)
                    if leave < end:
                        seq += 1
                        buckets[(leave - s0) // minute_ms].append(
                            new_leave(
                                event_id=f"{prefix}{seq:x}",
                                channel_id=cid,
                                creator_id=host0 if single else hosts[(leave - s0) // block_ms % n_hosts],
                                campaign=campaign,
                                user_id=uid,
                                ts_ms=leave,
                            )
                        )
                        present = leave
                    else:
                        present = end
                    span = present - ts - 1  # engagement happens in [ts + 1, present - 1]
                    if span < 1:
                        continue
                    if rand() < comment_p:
                        while True:
                            x = ts + 1 + to_int(rand() * span)
                            seq += 1
                            buckets[(x - s0) // minute_ms].append(
                                new_comment(
                                    event_id=f"{prefix}{seq:x}",
                                    channel_id=cid,
                                    creator_id=host0 if single else hosts[(x - s0) // block_ms % n_hosts],
                                    campaign=campaign,
                                    user_id=uid,
                                    ts_ms=x,
                                    text=texts[to_int(rand() * n_texts)],
                                )
                            )
                            if rand() >= comment_repeat:
                                break
                    if rand() < like_p:
                        while True:
                            x = ts + 1 + to_int(rand() * span)
                            seq += 1
                            buckets[(x - s0) // minute_ms].append(
                                new_like(
                                    event_id=f"{prefix}{seq:x}",
                                    channel_id=cid,
                                    creator_id=host0 if single else hosts[(x - s0) // block_ms % n_hosts],
                                    campaign=campaign,
                                    user_id=uid,
                                    ts_ms=x,
                                    count=taps[to_int(rand() * n_taps)],
                                )
                            )
                            if rand() >= like_repeat:
                                break
                    if rand() < share_p:
                        x = ts + 1 + to_int(rand() * span)
                        seq += 1
                        buckets[(x - s0) // minute_ms].append(
                            new_share(
                                event_id=f"{prefix}{seq:x}",
                                channel_id=cid,
                                creator_id=host0 if single else hosts[(x - s0) // block_ms % n_hosts],
                                campaign=campaign,
                                user_id=uid,
                                ts_ms=x,
                            )
                        )
                    if rand() < cart_p:
                        x = ts + 1 + to_int(rand() * span)
                        seq += 1
                        buckets[(x - s0) // minute_ms].append(
                            new_addtocart(
                                event_id=f"{prefix}{seq:x}",
                                channel_id=cid,
                                creator_id=host0 if single else hosts[(x - s0) // block_ms % n_hosts],
                                campaign=campaign,
                                user_id=uid,
                                ts_ms=x,
                                product_id=products[product_table[to_int(rand() * n_products)]].product_id,
                                quantity=1 if rand() < 0.8 else 2,
                            )
                        )
                    if i < n_buyers:
                        seq = self._emit_orders(
                            rand, st, buckets, cell_orders[i::n_views], uid, ts, present, seq, prefix
                        )
                if t == len(buckets) - 1:  # the platform's end-of-live signal, the channel's last event
                    seq += 1
                    current.append(
                        LiveEnd(
                            event_id=f"{prefix}{seq:x}",
                            channel_id=cid,
                            creator_id=st.host_at(end - 1),
                            campaign=campaign,
                            user_id=st.host_at(end - 1),
                            ts_ms=end - 1,
                        )
                    )
                state.seq = seq
                current.sort(key=_by_ts)
                buckets[t] = []
                if current:
                    by_channel[cid] = current
                    builder.add_all(current)
            yield MinuteSlice(m0, by_channel)
        self._oracle = builder.build()

    def _emit_orders(
        self,
        rand: Callable[[], float],
        st: StreamPlan,
        buckets: list[list[Event]],
        orders: Sequence[_PlannedOrder],
        uid: str,
        view_ts: int,
        present: int,
        seq: int,
        prefix: str,
    ) -> int:
        """Schedule the cart and order events of ``orders`` bought by ``uid`` (viewing since ``view_ts``)."""
        s0, end = st.start_ms, st.end_ms
        campaign = self.profile.campaign
        cid = st.channel_id
        limit = min(present, end - ORDER_TAIL_MS)  # >= view_ts + 3 s: buyer views end >= 40 s before the end
        for order in orders:
            cart_ts = view_ts + 1 + int(rand() * (limit - view_ts - 2))
            placed_ts = cart_ts + 1 + int(rand() * min(limit - cart_ts - 1, 120_000))
            room = end - 1 - placed_ts  # >= ORDER_TAIL_MS - 1
            times = [cart_ts, placed_ts]
            statuses: list[OrderStatus]
            if order.paid:
                paid_ts = placed_ts + 1_000 + int(rand() * min(room // 2 - 1_000, 300_000))
                times.append(paid_ts)
                statuses = ["placed", "paid"]
                if order.refunded:
                    times.append(paid_ts + 1 + int(rand() * min(end - 2 - paid_ts, 3_600_000)))
                    statuses.append("refunded")
            else:
                times.append(placed_ts + 1_000 + int(rand() * min(room // 2 - 1_000, 900_000)))
                statuses = ["placed", "cancelled"]
            seq += 1
            buckets[(cart_ts - s0) // MINUTE_MS].append(
                AddToCart(
                    event_id=f"{prefix}{seq:x}",
                    channel_id=cid,
                    creator_id=st.host_at(cart_ts),
                    campaign=campaign,
                    user_id=uid,
                    ts_ms=cart_ts,
                    product_id=order.product_id,
                    quantity=order.quantity,
                )
            )
            for ts, status in zip(times[1:], statuses, strict=True):
                seq += 1
                buckets[(ts - s0) // MINUTE_MS].append(
                    Order(
                        event_id=f"{prefix}{seq:x}",
                        channel_id=cid,
                        creator_id=st.host_at(ts),
                        campaign=campaign,
                        user_id=uid,
                        ts_ms=ts,
                        order_id=order.order_id,
                        product_id=order.product_id,
                        quantity=order.quantity,
                        amount_vnd=order.amount_vnd,
                        status=status,
                    )
                )
        return seq
