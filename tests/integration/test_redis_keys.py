"""The Redis mirror on the real Redis with ids that used to collide or break keys: every livestream and campaign is
mirrored and read back exactly (livestream.readback, the ops board), and stale data under one key costs that key's
writes only, never the other livestreams'. The mirror's flush is driven directly with a hand-built snapshot."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from agents.board import board_data
from agents.fair import FairReader
from agents.redis_mirror import RedisMirror, channel_alert_records
from livestream import readback
from livestream.alerts import show_alerts
from schemas.redis_keys import RedisKeys, split_alert_field
from stream.alerts import ActiveAlert, active_alert_record
from stream.settings import Settings
from stream.snapshot import ChannelView, ClosedWindow, LiveSnapshot
from stream.state import ChannelState, Counters

pytestmark = pytest.mark.services

MINUTE = 60_000
T0 = 1_687_572_000_000  # 2023-06-24 02:00 UTC, 09:00 in Vietnam
CHANNELS = {
    # livestream id -> campaign
    "a:viewers": "camp:1",
    "a": "camp:1",
    "a:w1m:60000": "camp:1",
    f"a:w1m:{T0}": "camp:1",
    "a%3Aviewers": "camp:1",
    "{x}": "{x}",
    "with space": "{x}",
    "line\nbreak": "{x}",
    "ü:ñ": "ü:ñ",
    "42": "ü:ñ",
    "\u00b2": "ü:ñ",
    "[/oops]": "ü:ñ",
    "x|stream_down": "ü:ñ",
}


@pytest.fixture
def settings(services: None) -> Iterator[Settings]:
    settings = Settings(namespace=f"t{uuid.uuid4().hex[:10]}")
    try:
        yield settings
    finally:
        client = redis.Redis.from_url(settings.redis_url)
        keys = list(client.scan_iter(f"{settings.redis_prefix}*", count=1000))
        if keys:
            client.delete(*keys)


def state_of(index: int, channel_id: str, campaign: str, *, alert: bool) -> ChannelState:
    totals = Counters(views=100 + index, comments=index, orders_paid=index + 1, gmv_vnd=1_000_000 * (index + 1))
    window = Counters(views=10 + index, gmv_vnd=1000 * (index + 1))
    alerts = {}
    if alert:
        alerts["stream_down"] = ActiveAlert(T0, T0 + 90_000, 90.0, 60.0, f"{channel_id} is silent", "page")
    return ChannelState(
        channel_id=channel_id,
        campaign=campaign,
        creators=[f"creator {channel_id}", f"{index}"],
        totals=totals,
        concurrent=5 + index,
        peak_concurrent=9 + index,
        first_ts_ms=T0,
        last_ts_ms=T0 + 2 * MINUTE + index,
        max_ts_ms=T0 + 2 * MINUTE + index,
        partition=index % 4,
        windows={T0 + 2 * MINUTE: window},
        alerts=alerts,
    )


def snapshot() -> tuple[LiveSnapshot, dict[str, ChannelState], dict[str, list[str]]]:
    live = LiveSnapshot()
    states, viewers = {}, {}
    for index, (channel_id, campaign) in enumerate(CHANNELS.items()):
        alert = index % 3 == 0 or channel_id == "[/oops]"
        state = states[channel_id] = state_of(index, channel_id, campaign, alert=alert)
        live.update(state)
        viewers[channel_id] = [f"u{index}-{n}" for n in range(index + 1)] + [f"shared-{n}" for n in range(3)]
        live.add_viewers({channel_id: viewers[channel_id]})
        live.pending_closed.append(ClosedWindow(channel_id, campaign, T0, MINUTE, Counters(views=index, likes=7)))
        live.pending_closed.append(ClosedWindow(channel_id, campaign, T0, 5 * MINUTE, Counters(views=index + 50)))
    for index, campaign in enumerate(sorted(set(CHANNELS.values()))):
        live.pending_campaign.append((campaign, T0, Counters(views=1000 + index), 3))
    milestone = active_alert_record(
        "gmv_milestone",
        ActiveAlert(T0, T0 + MINUTE, 1e8, 1e8, "100M VND", "info"),
        channel_id="",
        campaign="{x}",
        emitted_at_ms=0,
    )
    live.campaign_alerts = {"{x}": {"gmv_milestone": milestone}}
    live.campaign_alerts_dirty = True
    return live, states, viewers


def assert_every_livestream_written(client: redis.Redis, settings: Settings, states: dict[str, ChannelState]) -> None:
    """Every livestream of :func:`snapshot` reads back with its views (ids Redis refuses aside)."""
    for channel_id, campaign in CHANNELS.items():
        fields = readback.read_channels(client, settings.redis_prefix, campaign)[channel_id]
        if "error" not in fields:
            assert fields["views"] == states[channel_id].totals.views, channel_id


def flush(settings: Settings, live: LiveSnapshot) -> None:
    """One flush of a new mirror (its Redis client lives in this event loop)."""

    async def run() -> None:
        mirror = RedisMirror(settings, live)
        try:
            await mirror.flush()
        finally:
            await mirror.close()

    asyncio.run(run())


def check_mirrored(settings: Settings, states: dict[str, ChannelState], viewers: dict[str, list[str]]) -> None:
    """Every livestream and every campaign read back exactly."""
    client, keys, prefix = (
        redis.Redis.from_url(settings.redis_url),
        RedisKeys(settings.redis_prefix),
        settings.redis_prefix,
    )
    campaigns, index = sorted(set(CHANNELS.values())), {cid: i for i, cid in enumerate(CHANNELS)}
    assert readback.campaigns(client, prefix) == campaigns
    for campaign in campaigns:
        members = {cid for cid, c in CHANNELS.items() if c == campaign}
        channels = readback.read_channels(client, prefix, campaign)
        assert set(channels) == members
        for channel_id in members:
            state, fields = states[channel_id], channels[channel_id]
            assert fields["channel_id"] == channel_id and isinstance(fields["channel_id"], str)
            assert fields["campaign"] == campaign
            assert fields["creators"] == ",".join(state.creators)
            assert fields["views"] == state.totals.views
            assert fields["gmv_vnd"] == state.totals.gmv_vnd
            assert fields["orders_paid"] == state.totals.orders_paid
            assert fields["concurrent_viewers"] == state.concurrent
            assert fields["unique_viewers"] == len(set(viewers[channel_id]))
            assert fields["active_alerts"] == ",".join(sorted(state.alerts))
            assert client.type(keys.channel(channel_id)) == b"hash"
            assert client.type(keys.channel_viewers(channel_id)) == b"string"  # a HyperLogLog
            assert client.pfcount(keys.channel_viewers(channel_id)) == len(set(viewers[channel_id]))
            open_window = client.hgetall(keys.window(channel_id, T0 + 2 * MINUTE))
            assert int(open_window[b"views"]) == 10 + index[channel_id]
            assert open_window[b"final"] == b"0"
            closed = client.hgetall(keys.window(channel_id, T0))
            assert (int(closed[b"views"]), int(closed[b"likes"]), closed[b"final"]) == (index[channel_id], 7, b"1")
            assert int(client.hget(keys.window(channel_id, T0, 5 * MINUTE), "views") or -1) == 50 + index[channel_id]
            assert client.ttl(keys.window(channel_id, T0)) > 0
        totals = readback.read_campaign(client, prefix, campaign)
        assert totals["views"] == sum(states[c].totals.views for c in members)
        assert totals["gmv_vnd"] == sum(states[c].totals.gmv_vnd for c in members)
        assert totals["livestreams"] == len(members)
        assert totals["creators"] == len({creator for c in members for creator in states[c].creators})
        assert totals["unique_viewers"] == len({u for c in members for u in viewers[c]})
        gmv = {m.decode(): int(s) for m, s in client.zrange(keys.campaign(campaign, "gmv"), 0, -1, withscores=True)}
        assert gmv == {c: states[c].totals.gmv_vnd for c in members}
        window = client.hgetall(keys.campaign_window(campaign, T0))
        assert int(window[b"views"]) == 1000 + campaigns.index(campaign)
        assert int(window[b"livestreams"]) == 3
        assert client.zrange(keys.campaign(campaign, "windows"), 0, -1) == [str(T0).encode()]

    expected_alerts = [
        msgspec.to_builtins(record)
        for cid in CHANNELS
        for record in channel_alert_records(ChannelView.of(states[cid])).values()
    ]
    active = readback.read_active_alerts(client, prefix)
    milestones = [a for a in active if a["rule"] == "gmv_milestone"]
    assert [(a["campaign"], a["channel_id"]) for a in milestones] == [("{x}", "")]
    channel_alerts = sorted((a for a in active if a["rule"] != "gmv_milestone"), key=lambda a: a["channel_id"])
    assert channel_alerts == sorted(expected_alerts, key=lambda a: a["channel_id"])
    # Fields split back into (rule, subject) even for the livestream "x|stream_down".
    alert_fields = {split_alert_field(f.decode()) for f in client.hkeys(keys.active_alerts())}
    assert alert_fields == {("stream_down", a["channel_id"]) for a in channel_alerts} | {("gmv_milestone", "{x}")}
    assert ("stream_down", "x|stream_down") in alert_fields


def test_ids_that_look_like_keys_mirror_and_read_back_exactly(settings: Settings) -> None:
    live, states, viewers = snapshot()
    flush(settings, live)
    assert (live.redis_errors, live.redis_flushes) == (0, 1)
    assert not live.dirty and not live.pending_viewers and not live.pending_closed and not live.pending_windows
    check_mirrored(settings, states, viewers)

    # The ops board reads the same keys.
    async def board(campaign: str) -> dict[str, Any]:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            return await board_data(client, RedisKeys(settings.redis_prefix), campaign)
        finally:
            await client.aclose()

    data = asyncio.run(board("ü:ñ"))
    assert data["campaign"] == "ü:ñ"
    assert sorted(c["channel_id"] for c in data["channels"]) == sorted(c for c, k in CHANNELS.items() if k == "ü:ñ")
    assert data["totals"]["views"] == sum(states[c].totals.views for c, k in CHANNELS.items() if k == "ü:ñ")
    assert [m["views"] for m in data["minutes"]] == [1000 + sorted(set(CHANNELS.values())).index("ü:ñ")]
    assert [a["campaign"] for a in asyncio.run(board("{x}"))["alerts"] if a["rule"] == "gmv_milestone"] == ["{x}"]

    # The query API's reader (/api/v1/channels/{id}, /api/v1/campaigns/{id}) finds every one of them.
    async def api_reads() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[dict[str, Any]]]:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            reader = FairReader(client, settings)
            channels = {cid: await reader.channel(cid) for cid in CHANNELS}
            campaigns = {c: await reader.campaign(c) for c in set(CHANNELS.values())}
            return channels, campaigns, await reader.channels()
        finally:
            await client.aclose()

    by_channel, by_campaign, listed = asyncio.run(api_reads())
    assert {cid: found["channel_id"] for cid, found in by_channel.items()} == {cid: cid for cid in CHANNELS}
    assert sorted(c["channel_id"] for c in listed) == sorted(CHANNELS)
    for campaign_id, found in by_campaign.items():
        members = [c for c, k in CHANNELS.items() if k == campaign_id]
        assert found["totals"]["views"] == sum(states[c].totals.views for c in members), campaign_id


def test_stale_data_under_one_key_costs_only_that_keys_writes(settings: Settings, caplog: Any) -> None:
    """Stale values of another type under three keys (WRONGTYPE): the mirror logs and counts each refused write,
    drops it, and every other livestream, window and campaign is mirrored; later flushes keep going."""
    client, keys, prefix = (
        redis.Redis.from_url(settings.redis_url),
        RedisKeys(settings.redis_prefix),
        settings.redis_prefix,
    )
    client.set(keys.channel("a"), "stale")  # livestream "a": its hash
    client.rpush(keys.channel_viewers("{x}"), "stale")  # livestream "{x}": its HyperLogLog
    client.set(keys.window("42", T0), "stale")  # livestream "42": one closed window
    live, states, viewers = snapshot()

    async def run() -> None:
        mirror = RedisMirror(settings, live)
        try:
            await first_flush(mirror)
            await later_flushes(mirror)
        finally:
            await mirror.close()

    async def first_flush(mirror: RedisMirror) -> None:
        with caplog.at_level("WARNING", logger="agents.redis_mirror"):
            await mirror.flush()
        assert live.redis_flushes == 1, "the flush went through"
        assert live.redis_errors == 4, "HSET of a, PFADD and PFCOUNT of {x}, HSET of 42's window"
        assert not live.dirty and not live.pending_viewers and not live.pending_closed, "refused writes are dropped"
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 3, "one warning per key"
        assert any(repr(keys.channel("a")) in m and "WRONGTYPE" in m for m in refused), refused
        assert any(repr(keys.channel_viewers("{x}")) in m for m in refused), refused
        # The stale values are left alone; every other livestream is exact.
        assert client.get(keys.channel("a")) == b"stale"
        assert client.type(keys.channel_viewers("{x}")) == b"list"
        assert client.get(keys.window("42", T0)) == b"stale"
        check_mirrored_except_stale(settings, states, viewers)

    async def later_flushes(mirror: RedisMirror) -> None:
        """The same keys refused again (counted, not logged again), everything else written."""
        again = state_of(1, "a", "camp:1", alert=False)
        again.totals.views += 1
        live.update(again)
        live.update(state_of(8, "ü:ñ", "ü:ñ", alert=True))
        live.add_viewers({"a": ["late-viewer"], "{x}": ["late-viewer"], "ü:ñ": ["late-viewer"]})
        caplog.clear()
        with caplog.at_level("WARNING", logger="agents.redis_mirror"):
            await mirror.flush()
            await mirror.flush()
        assert not [r for r in caplog.records if "refused" in r.getMessage()]
        assert live.redis_flushes == 2 and not live.dirty and not live.pending_viewers
        assert live.redis_errors == 4 + 2, "HSET of a, PFADD of {x}"
        assert client.pfcount(keys.channel_viewers("a")) == len(set(viewers["a"])) + 1
        assert client.pfcount(keys.channel_viewers("ü:ñ")) == len(set(viewers["ü:ñ"])) + 1
        assert readback.read_channels(client, prefix, "ü:ñ")["ü:ñ"]["active_alerts"] == "stream_down"

    asyncio.run(run())


def check_mirrored_except_stale(
    settings: Settings, states: dict[str, ChannelState], viewers: dict[str, list[str]]
) -> None:
    client, keys, prefix = (
        redis.Redis.from_url(settings.redis_url),
        RedisKeys(settings.redis_prefix),
        settings.redis_prefix,
    )
    index = {cid: i for i, cid in enumerate(CHANNELS)}
    a = readback.read_channels(client, prefix, "camp:1")
    assert "WRONGTYPE" in a["a"]["error"], "a stale key reads as an error, the others as usual"
    assert {cid: fields["views"] for cid, fields in a.items() if cid != "a"} == {
        cid: states[cid].totals.views for cid, k in CHANNELS.items() if k == "camp:1" and cid != "a"
    }
    # "{x}"'s viewers never reached a HyperLogLog: its hash and its campaign do not count them.
    x = readback.read_channels(client, prefix, "{x}")
    assert x["{x}"]["views"] == states["{x}"].totals.views
    assert x["{x}"]["unique_viewers"] == 0
    assert readback.read_campaign(client, prefix, "{x}")["unique_viewers"] == len(
        {u for cid, k in CHANNELS.items() if k == "{x}" and cid != "{x}" for u in viewers[cid]}
    )
    for cid, campaign in CHANNELS.items():
        if cid in ("a", "{x}"):
            continue
        fields = readback.read_channels(client, prefix, campaign)[cid]
        assert fields["unique_viewers"] == len(set(viewers[cid])), cid
        assert fields["gmv_vnd"] == states[cid].totals.gmv_vnd, cid
        if cid != "42":
            assert int(client.hget(keys.window(cid, T0), "views") or -1) == index[cid]
    assert client.hget(keys.window("42", T0 + 2 * MINUTE), "final") == b"0", "42's other windows are written"
    assert int(client.hget(keys.window("42", T0, 5 * MINUTE), "views") or -1) == 50 + index["42"]
    for campaign in set(CHANNELS.values()):
        assert client.hget(keys.campaign_window(campaign, T0), "livestreams") == b"3"


def test_alerts_command_prints_ids_as_text(settings: Settings, capsys: Any, monkeypatch: Any) -> None:
    live, states, _ = snapshot()
    flush(settings, live)
    alerting = sorted(cid for cid, state in states.items() if state.alerts)
    assert "[/oops]" in alerting
    monkeypatch.setenv("COLUMNS", "400")
    assert show_alerts(settings, history=False, as_json=False) == len(alerting) + 1  # and the campaign's milestone
    out = capsys.readouterr().out
    assert "[/oops] is silent" in out
    assert "campaign {x}" in out


def test_alerts_that_fire_and_resolve_between_two_writes_are_in_the_history(settings: Settings) -> None:
    """Catch-up (or a fast replay) folds a milestone's firing and its resolution into one batch: the state that
    reaches Redis has no active alert, and the history still gets the alert, resolved at its resolution's time.
    A livestream alert resolved in a later write keeps its firing record's figures."""
    from schemas.alerts import AlertRecord
    from stream.alerts import alert_id

    milestone = AlertRecord(
        alert_id=alert_id("gmv_milestone", "fair {1}", T0),
        rule="gmv_milestone",
        status="firing",
        severity="info",
        channel_id="",
        campaign="fair {1}",
        window_start_ms=T0,
        at_ms=T0 + MINUTE,
        value=100_500_000.0,
        threshold=100_000_000.0,
        summary="fair {1} passed 100,000,000 VND",
        emitted_at_ms=1,
    )
    silent = msgspec.structs.replace(
        milestone,
        alert_id=alert_id("stream_down", "live [a]", T0),
        rule="stream_down",
        severity="page",
        channel_id="live [a]",
        value=95.0,
        threshold=60.0,
        summary="live [a] is silent",
    )
    live = LiveSnapshot()
    live.add_transitions(
        [milestone, msgspec.structs.replace(milestone, status="resolved", at_ms=T0 + 2 * MINUTE, value=0.0), silent]
    )

    async def write_and_read(more: list[AlertRecord]) -> list[dict[str, Any]]:
        mirror = RedisMirror(settings, live)
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            await mirror.flush()
            live.add_transitions(more)
            await mirror.flush()
            return await FairReader(client, settings).alert_history()
        finally:
            await mirror.close()
            await client.aclose()

    resolution = msgspec.structs.replace(silent, status="resolved", at_ms=T0 + 3 * MINUTE, value=0.0, summary="back")
    history = {entry["alert_id"]: entry for entry in asyncio.run(write_and_read([resolution]))}
    assert set(history) == {milestone.alert_id, silent.alert_id}
    first = history[milestone.alert_id]
    assert (first["status"], first["resolved_at_ms"], first["value"]) == ("resolved", T0 + 2 * MINUTE, 100_500_000.0)
    second = history[silent.alert_id]
    assert (second["status"], second["resolved_at_ms"], second["summary"]) == (
        "resolved",
        T0 + 3 * MINUTE,
        silent.summary,
    )
    assert live.alert_transitions == []


def test_keys_lost_by_redis_are_written_again_by_the_owner(settings: Settings, monkeypatch: Any) -> None:
    """Redis loses the namespace's keys (a restart without its files, FLUSHALL, eviction) while nothing changes in
    the pipeline: within a loss check the mirror notices its marker is gone, writes every livestream, its alerts and
    the campaign's milestone again, and counts it."""
    import agents.redis_mirror as mirror_module

    monkeypatch.setattr(mirror_module, "LOSS_CHECK_S", 0.0)
    live, states, _ = snapshot()
    client = redis.Redis.from_url(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix)

    async def run() -> None:
        mirror = RedisMirror(settings, live)
        try:
            await mirror.flush()
            assert client.exists(mirror.marker)
            await mirror.flush()  # nothing pending, nothing lost
            assert live.redis_rebuilds == 0
            client.delete(*client.scan_iter(f"{settings.redis_prefix}*", count=1000))
            await mirror.flush()
        finally:
            await mirror.close()

    asyncio.run(run())
    assert live.redis_rebuilds == 1
    assert_every_livestream_written(client, settings, states)
    alerting = {cid for cid, state in states.items() if state.alerts}
    active = {split_alert_field(f.decode())[1] for f in client.hkeys(keys.active_alerts())}
    assert active == alerting | {"{x}"}, "every active alert, the campaign's milestone included"


def test_an_older_state_never_overwrites_a_newer_one(settings: Settings) -> None:
    """Two owners of a partition during a rebalance: the new one mirrors a livestream's state as of offset 120, then
    the old one's flush, still in flight, lands with its state as of offset 100 (or a resync writes a table row
    older than what Redis shows): the livestream's hash and its open window keep the newer values. A final window
    is never turned back into an open one. A newer state from either is written."""
    keys = RedisKeys(settings.redis_prefix)
    client = redis.Redis.from_url(settings.redis_url)

    def owner(offset: int, views: int, window_views: int) -> LiveSnapshot:
        state = ChannelState(channel_id="live {1}", campaign="fair", partition=2, last_offset=offset)
        state.totals.views = views
        state.windows = {T0: Counters(views=window_views)}
        live = LiveSnapshot()
        live.update(state)
        return live

    def channel() -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in client.hgetall(keys.channel("live {1}")).items()}

    def window() -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in client.hgetall(keys.window("live {1}", T0)).items()}

    flush(settings, owner(120, 50, 20))
    flush(settings, owner(100, 40, 10))
    assert (channel()["views"], channel()["state_offset"], window()["views"]) == ("50", "120", "20")

    closing = owner(130, 55, 25)
    closing.pending_windows.clear()
    closing.pending_closed.append(ClosedWindow("live {1}", "fair", T0, MINUTE, Counters(views=25)))
    flush(settings, closing)
    assert (window()["final"], window()["views"]) == ("1", "25")
    flush(settings, owner(125, 52, 22))  # older, its window still open
    assert (channel()["views"], window()["final"], window()["views"]) == ("55", "1", "25")

    client.script_flush()  # as after a Redis restart: the mirror loads its script again
    flush(settings, owner(140, 60, 30))  # newer: written (the window stays final)
    assert (channel()["views"], channel()["state_offset"], window()["final"]) == ("60", "140", "1")


@pytest.fixture
def evicting_redis(services: None, tmp_path: Any) -> Iterator[str]:
    """A Redis of its own (the Debian server the project installs) that evicts any key past 8 MB."""
    import shutil
    import subprocess

    from tests.support import free_port, wait_until

    port = free_port()
    server = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--maxmemory",
            "8mb",
            "--maxmemory-policy",
            "allkeys-random",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url).ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(answers, 20, "the evicting Redis to answer")
        yield url
    finally:
        server.terminate()
        server.wait(10)


def test_keys_evicted_by_redis_are_written_again_by_the_owner(evicting_redis: str, monkeypatch: Any) -> None:
    """A Redis whose maxmemory-policy evicts: the mirror says so (``livestream_redis_evicting``), and once Redis
    evicts keys (other data filled its memory), the next loss check writes every owned livestream again, even when
    its marker key was not among the evicted ones."""
    import agents.redis_mirror as mirror_module

    monkeypatch.setattr(mirror_module, "LOSS_CHECK_S", 0.0)
    settings = Settings(namespace=f"t{uuid.uuid4().hex[:10]}", redis_url=evicting_redis)
    live, states, _ = snapshot()
    client = redis.Redis.from_url(evicting_redis)

    async def run() -> None:
        mirror = RedisMirror(settings, live)
        try:
            await mirror.flush()
            assert live.redis_evicting and live.redis_rebuilds == 0
            for n in range(200):  # 200 x 100 kB into an 8 MB Redis: keys get evicted
                client.set(f"other:{n}", b"x" * 100_000)
            assert int(client.info("stats")["evicted_keys"]) > 0
            client.delete(*client.scan_iter("other:*", count=1000))
            client.set(mirror.marker, b"1")  # evicted or not: here only the eviction count can tell
            await mirror.flush()
        finally:
            await mirror.close()

    asyncio.run(run())
    assert live.redis_rebuilds == 1
    assert_every_livestream_written(client, settings, states)
