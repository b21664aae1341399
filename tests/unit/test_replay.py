"""Unit tests of the fair replay (stream.replay): exact totals, determinism, ordering, orders and the oracle."""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TypedDict

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import AddToCart, Batch, Comment, Event, Leave, Like, LiveEnd, Order, Record, Share, View
from stream.replay import OCOP_FAIR, FairReplay, Oracle, OracleBuilder, scaled
from stream.replay.generator import apportion, fit_total

MIN_SCALE = 52 / 1_700_000  # 2 views for each of the 26 livestreams
SCALES_SEEDS = [(MIN_SCALE, 11), (0.002, 1), (0.002, 2), (0.01, 7), (0.1, 3)]

Cache = dict[tuple[float, int], tuple[FairReplay, list[Event]]]


@pytest.fixture(scope="module")
def replays() -> Iterator[Cache]:
    """Fully iterated replays shared by the tests of this module, freed at its end."""
    runs: Cache = {}
    yield runs
    runs.clear()


def replay_events(replays: Cache, scale: float, seed: int) -> tuple[FairReplay, list[Event]]:
    """A fully iterated replay and its events (cached: several tests share one run)."""
    key = (scale, seed)
    if key not in replays:
        replay = FairReplay(scaled(OCOP_FAIR, scale), seed)
        replays[key] = (replay, list(replay.iter_events()))
    return replays[key]


def check_invariants(replay: FairReplay, events: list[Event]) -> None:
    """Everything that must hold for any replay: bounds, ordering, ids, hosts, leaves and orders."""
    p = replay.profile
    spans = {s.channel_id: s for s in replay.streams}
    last_ts: dict[str, int] = {}
    ids: set[str] = set()
    present: Counter[tuple[str, str]] = Counter()
    orders: dict[str, list[Order]] = defaultdict(list)
    for ev in events:
        span = spans[ev.channel_id]
        assert p.start_ms <= span.start_ms <= ev.ts_ms < span.end_ms <= p.end_ms
        assert ev.ts_ms >= last_ts.get(ev.channel_id, 0), "channel events out of time order"
        last_ts[ev.channel_id] = ev.ts_ms
        assert ev.event_id not in ids
        ids.add(ev.event_id)
        assert ev.campaign == p.campaign
        assert ev.creator_id == span.host_at(ev.ts_ms)
        key = (ev.channel_id, ev.user_id)
        if isinstance(ev, View):
            present[key] += 1
        elif isinstance(ev, Leave):
            assert present[key] > 0, "leave without an earlier view"
            present[key] -= 1
        elif isinstance(ev, Like):
            assert 1 <= ev.count <= 30
        elif isinstance(ev, Order):
            orders[ev.order_id].append(ev)
    last_event: dict[str, Event] = {}
    for ev in events:
        last_event[ev.channel_id] = ev
    for channel_id, ev in last_event.items():
        assert isinstance(ev, LiveEnd) and ev.ts_ms == spans[channel_id].end_ms - 1, channel_id
    assert sum(isinstance(ev, LiveEnd) for ev in events) == len(last_event)
    for order_id, chain in orders.items():
        statuses = [o.status for o in chain]
        assert statuses in (["placed", "paid"], ["placed", "cancelled"], ["placed", "paid", "refunded"]), order_id
        assert len({(o.channel_id, o.user_id, o.product_id, o.quantity, o.amount_vnd) for o in chain}) == 1
        assert all(a.ts_ms < b.ts_ms for a, b in itertools.pairwise(chain))
        assert chain[0].amount_vnd > 0


def test_profile_defaults() -> None:
    p = OCOP_FAIR
    assert p.start_ms == int(datetime(2023, 6, 24, 2, 0, tzinfo=UTC).timestamp()) * 1000
    assert p.end_ms - p.start_ms == (4 * 60 + 45) * 60_000
    assert p.start_dt.utcoffset() is not None
    assert (p.livestreams, p.creators, p.views, p.paid_orders, p.gmv_vnd) == (26, 40, 1_700_000, 5_182, 1_200_000_000)
    assert 8 <= len(p.products) <= 12
    assert all(isinstance(pr.price_vnd, int) and pr.price_vnd > 0 for pr in p.products)


def test_scaled() -> None:
    s = scaled(OCOP_FAIR, 0.01)
    assert (s.views, s.paid_orders, s.gmv_vnd) == (17_000, 52, 12_000_000)
    assert (s.livestreams, s.creators, s.campaign) == (26, 40, OCOP_FAIR.campaign)
    assert scaled(OCOP_FAIR, 0.0001).paid_orders == 1
    for bad in (0.0, -1.0, math.nan, math.inf, 1e-5, 51 / 1_700_000):
        with pytest.raises(ValueError, match=r"scale|views"):
            scaled(OCOP_FAIR, bad)
    with pytest.raises(ValueError, match="paid order"):
        dataclasses.replace(OCOP_FAIR, gmv_vnd=10)  # less than 1 VND per paid order


@pytest.mark.parametrize(("scale", "seed"), SCALES_SEEDS)
def test_exact_totals_and_invariants(scale: float, seed: int, replays: Cache) -> None:
    replay, events = replay_events(replays, scale, seed)
    p = replay.profile
    views = sum(1 for e in events if isinstance(e, View))
    paid = [e for e in events if isinstance(e, Order) and e.status == "paid"]
    assert views == p.views
    assert len(paid) == p.paid_orders
    assert sum(o.amount_vnd for o in paid) == p.gmv_vnd
    assert len({e.channel_id for e in events}) == 26
    assert len({e.creator_id for e in events}) == 40
    assert replay.oracle.summary() == {
        "views": p.views,
        "orders": p.paid_orders,
        "gmv_vnd": p.gmv_vnd,
        "livestreams": 26,
        "creators": 40,
    }
    check_invariants(replay, events)


@pytest.mark.parametrize(("scale", "seed"), SCALES_SEEDS)
def test_oracle_from_events_equals_generator_oracle(scale: float, seed: int, replays: Cache) -> None:
    replay, events = replay_events(replays, scale, seed)
    assert Oracle.from_events(events) == replay.oracle
    builder = OracleBuilder()
    for ev in events:
        builder.add(ev)
    assert builder.build() == replay.oracle


def test_streams_and_hosts(replays: Cache) -> None:
    replay, _ = replay_events(replays, 0.002, 1)
    streams = replay.streams
    assert [s.channel_id for s in streams] == [f"ocop-live-{i:02d}" for i in range(1, 27)]
    hosts = [h for s in streams for h in s.hosts]
    assert sorted(hosts) == [f"creator-{i:02d}" for i in range(1, 41)]  # every creator hosts exactly one stream
    assert sum(len(s.hosts) == 2 for s in streams) == 14
    assert len({s.start_ms for s in streams}) > 5
    assert len({s.end_ms for s in streams}) > 5
    for s in streams:
        assert 45 * 60_000 <= s.end_ms - s.start_ms <= 285 * 60_000
        assert s.start_ms <= OCOP_FAIR.start_ms + (12 * 60 + 30 - 9 * 60) * 60_000
    oracle = replay.oracle
    for s in streams:
        assert oracle.channels[s.channel_id].creators == frozenset(s.hosts)


def test_determinism(replays: Cache) -> None:
    profile = scaled(OCOP_FAIR, 0.01)
    _, a = replay_events(replays, 0.01, 7)
    b = list(FairReplay(profile, 7).iter_events())
    assert a == b
    assert [e.event_id for e in a] == [e.event_id for e in b]
    c = list(FairReplay(profile, 8).iter_events())
    assert a != c
    replay = FairReplay(profile, 7)
    assert list(replay.iter_events()) == list(replay.iter_events())  # iterating again replays the same events


def test_minute_slices() -> None:
    replay = FairReplay(scaled(OCOP_FAIR, 0.002), 5)
    with pytest.raises(RuntimeError):
        _ = replay.oracle
    slices = list(replay.minutes())
    p = replay.profile
    assert [s.start_ms for s in slices] == list(range(p.start_ms, p.end_ms, 60_000))
    order = [s.channel_id for s in replay.streams]
    for s in slices:
        assert list(s.by_channel) == [c for c in order if c in s.by_channel]
        for channel, events in s.by_channel.items():
            assert events
            assert all(e.channel_id == channel and s.start_ms <= e.ts_ms < s.start_ms + 60_000 for e in events)
            assert [e.ts_ms for e in events] == sorted(e.ts_ms for e in events)
    assert replay.oracle.views == p.views

    partial = FairReplay(scaled(OCOP_FAIR, 0.002), 5)
    it = partial.minutes()
    next(it)
    with pytest.raises(RuntimeError):
        _ = partial.oracle


def test_msgspec_round_trip(replays: Cache) -> None:
    replay, events = replay_events(replays, 0.01, 7)
    decoder = msgspec.json.Decoder(Record)
    types = set()
    for ev in events:
        back = decoder.decode(msgspec.json.encode(ev))
        assert back == ev
        types.add(type(ev))
    assert types == {View, Leave, Comment, Like, Share, AddToCart, Order, LiveEnd}
    for minute in list(replay.minutes())[:30]:
        for channel, evs in minute.by_channel.items():
            batch = Batch(channel_id=channel, events=evs)
            assert decoder.decode(msgspec.json.encode(batch)) == batch


def test_ratios_are_plausible(replays: Cache) -> None:
    replay, _ = replay_events(replays, 0.1, 3)
    oracle = replay.oracle
    kinds = oracle.events_by_type
    views = oracle.views
    assert 0.6 <= oracle.unique_viewers / views <= 0.75
    assert 0.03 <= kinds["comment"] / views <= 0.07
    assert 0.10 <= kinds["like"] / views <= 0.20
    assert 0.002 <= kinds["share"] / views <= 0.01
    assert 0.85 * views <= kinds["leave"] < views
    carts = sum(c.add_to_carts for c in oracle.channels.values())
    placed = sum(c.orders_placed for c in oracle.channels.values())
    cancelled = sum(c.orders_cancelled for c in oracle.channels.values())
    refunded = sum(c.orders_refunded for c in oracle.channels.values())
    assert 2.5 <= carts / oracle.orders <= 3.5
    assert placed == oracle.orders + cancelled
    assert 0.04 <= cancelled / placed <= 0.08
    assert 1 <= refunded <= 0.03 * oracle.orders
    assert 150_000 <= oracle.gmv_vnd // oracle.orders <= 320_000
    paid_by_stream = sorted((c.orders_paid for c in oracle.channels.values()), reverse=True)
    assert paid_by_stream[0] < oracle.orders / 2
    assert sum(1 for n in paid_by_stream if n) >= 20
    views_by_stream = sorted(c.views for c in oracle.channels.values())
    assert views_by_stream[-1] > 5 * views_by_stream[0]  # skewed popularity


class _Common(TypedDict):
    campaign: str
    creator_id: str


def test_oracle_semantics_on_hand_made_events() -> None:
    base: _Common = {"campaign": "c", "creator_id": "k1"}
    t0 = 1_687_572_000_000
    events: list[Event] = [
        View(event_id="1", channel_id="a", user_id="u1", ts_ms=t0, **base),
        View(event_id="2", channel_id="a", user_id="u2", ts_ms=t0 + 1, **base),
        Leave(event_id="3", channel_id="a", user_id="u1", ts_ms=t0 + 2, **base),
        View(event_id="4", channel_id="a", user_id="u1", ts_ms=t0 + 60_000, **base),
        Like(event_id="5", channel_id="a", user_id="u1", ts_ms=t0 + 60_001, count=7, **base),
        View(event_id="6", channel_id="b", user_id="u1", ts_ms=t0 + 5, campaign="c", creator_id="k2"),
        Order(
            event_id="7",
            channel_id="a",
            user_id="u2",
            ts_ms=t0 + 3,
            order_id="o",
            product_id="p",
            quantity=2,
            amount_vnd=300,
            status="placed",
            **base,
        ),
        Order(
            event_id="8",
            channel_id="a",
            user_id="u2",
            ts_ms=t0 + 4,
            order_id="o",
            product_id="p",
            quantity=2,
            amount_vnd=300,
            status="paid",
            **base,
        ),
        Order(
            event_id="9",
            channel_id="a",
            user_id="u2",
            ts_ms=t0 + 70_000,
            order_id="o",
            product_id="p",
            quantity=2,
            amount_vnd=300,
            status="refunded",
            **base,
        ),
    ]
    o = Oracle.from_events(events)
    a = o.channels["a"]
    assert (a.views, a.leaves, a.unique_viewers, a.peak_concurrent, a.concurrent) == (3, 1, 2, 2, 2)
    assert (a.likes, a.like_events, a.orders_placed, a.orders_paid, a.orders_refunded) == (7, 1, 1, 1, 1)
    assert (a.items_sold, a.gmv_vnd, a.first_ts_ms, a.last_ts_ms) == (2, 300, t0, t0 + 70_000)
    assert o.windows[("a", t0)].views == 2
    assert o.windows[("a", t0)].gmv_vnd == 300
    assert o.windows[("a", t0 + 60_000)].likes == 7
    assert o.windows[("a", t0 + 60_000)].orders_refunded == 1
    assert o.summary() == {"views": 4, "orders": 1, "gmv_vnd": 300, "livestreams": 2, "creators": 2}
    assert o.unique_viewers == 2
    assert Oracle.from_events(events[::-1]).channels["a"].peak_concurrent == 2


@given(st.integers(0, 10_000), st.lists(st.integers(0, 1_000), min_size=1, max_size=40))
def test_apportion_is_exact(total: int, weights: list[int]) -> None:
    if sum(weights) == 0 and total:
        with pytest.raises(ValueError, match="zero"):
            apportion(total, weights)
        return
    shares = apportion(total, weights)
    assert sum(shares) == total
    denominator = sum(weights) or 1
    for w, s in zip(weights, shares, strict=True):
        assert abs(s * denominator - total * w) < denominator  # floor or ceiling of the quota
        assert w or not s


@given(st.lists(st.integers(1, 10**7), min_size=1, max_size=30), st.integers(1, 10**9))
def test_fit_total_is_exact_and_positive(values: list[int], per_value: int) -> None:
    target = max(len(values), per_value * len(values) // 3)
    fitted = fit_total(values, target)
    assert sum(fitted) == target
    assert all(1 <= v <= 10_000_000_000 for v in fitted)


def test_full_fair_scale_1() -> None:
    replay = FairReplay(OCOP_FAIR, 7)
    p = OCOP_FAIR
    spans = {s.channel_id: (s.start_ms, s.end_ms) for s in replay.streams}
    last_ts = dict.fromkeys(spans, 0)
    views = paid = gmv = 0
    creators: set[str] = set()
    started = time.perf_counter()
    for minute in replay.minutes():
        for channel, events in minute.by_channel.items():
            lo, hi = spans[channel]
            assert lo <= events[0].ts_ms
            assert events[-1].ts_ms < hi
            assert events[0].ts_ms >= last_ts[channel]
            last_ts[channel] = events[-1].ts_ms
            creators.add(events[0].creator_id)
            creators.add(events[-1].creator_id)
            for ev in events:
                kind = type(ev)
                if kind is View:
                    views += 1
                elif isinstance(ev, Order) and ev.status == "paid":
                    paid += 1
                    gmv += ev.amount_vnd
    elapsed = time.perf_counter() - started
    assert (views, paid, gmv) == (p.views, p.paid_orders, p.gmv_vnd)
    assert len(creators) == 40
    oracle = replay.oracle
    assert oracle.summary() == {
        "views": 1_700_000,
        "orders": 5_182,
        "gmv_vnd": 1_200_000_000,
        "livestreams": 26,
        "creators": 40,
    }
    assert sum(c.views for c in oracle.channels.values()) == p.views
    assert sum(w.gmv_vnd for w in oracle.windows.values()) == p.gmv_vnd
    assert 0.6 <= oracle.unique_viewers / p.views <= 0.75
    assert elapsed < 45, f"full fair took {elapsed:.1f} s"
