"""Mirrors the live snapshot into Redis, the serving layer: soon after each processed batch (at most one flush per
``redis_flush_interval_s``), and at least every that long while anything is pending.

Only absolute values are written (HSET of current totals, ZADD of GMV, PFADD of viewer ids, SADD of
memberships), in one pipelined round trip per flush, so replays and retries can never double count in Redis.
If Redis is unreachable the pending work is kept and retried on the next tick; processing never waits for Redis.

Key layout (``P`` = ``<namespace>:``), shared with :mod:`livestream.readback`:

- ``P campaigns`` set of campaigns; ``P campaign:<c>:channels`` / ``:creators`` sets; ``:gmv`` zset channel -> GMV;
  ``:viewers`` HyperLogLog of the campaign's viewers;
- ``P channel:<id>`` hash of stream-to-date counters and gauges; ``P channel:<id>:viewers`` HyperLogLog;
- ``P channel:<id>:w1m:<start_ms>`` hash of one 1-minute window (``final`` 0 while open, 1 once closed);
  ``P channel:<id>:w5m:<start_ms>`` the final 5-minute hopping windows;
- ``P campaign:<c>:w1m:<start_ms>`` hash of one final campaign window (``livestreams``, counters), indexed by
  start in the zset ``P campaign:<c>:windows``;
- ``P alerts:active`` hash ``rule|subject`` -> JSON :class:`~schemas.alerts.AlertRecord` of every active alert
  (subject: livestream, or campaign for ``gmv_milestone``); a resolved alert's field is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import faust
import msgspec
import redis.asyncio as aioredis

from schemas.alerts import AlertRecord
from stream.alerts import RULES
from stream.settings import Settings
from stream.snapshot import ChannelView, ClosedWindow, LiveSnapshot
from stream.state import Counters

log = logging.getLogger(__name__)
WINDOW_TTL_S = 7 * 86_400
PFADD_CHUNK = 5_000
PIPELINE_CHUNK = 4_000
"""Commands per pipelined round trip: bounds the memory a flush of many livestreams needs."""
MERGE_CHUNK = 500


class RedisKeys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def campaigns(self) -> str:
        return f"{self.prefix}campaigns"

    def campaign(self, campaign: str, what: str) -> str:
        return f"{self.prefix}campaign:{campaign}:{what}"

    def channel(self, channel_id: str) -> str:
        return f"{self.prefix}channel:{channel_id}"

    def channel_viewers(self, channel_id: str) -> str:
        return f"{self.prefix}channel:{channel_id}:viewers"

    def window(self, channel_id: str, start_ms: int, size_ms: int = 60_000) -> str:
        return f"{self.prefix}channel:{channel_id}:w{size_ms // 60_000}m:{start_ms}"

    def campaign_window(self, campaign: str, start_ms: int) -> str:
        return f"{self.prefix}campaign:{campaign}:w1m:{start_ms}"

    def active_alerts(self) -> str:
        return f"{self.prefix}alerts:active"


CHANNEL_RULES = tuple(rule for rule in RULES if rule != "gmv_milestone")


def channel_alert_records(state: ChannelView) -> dict[str, AlertRecord]:
    """The active alerts of a livestream as records, by ``rule|channel`` field."""
    return {
        f"{rule}|{state.channel_id}": AlertRecord.from_active(
            rule, alert, channel_id=state.channel_id, campaign=state.campaign, emitted_at_ms=0
        )
        for rule, alert in (state.alerts or {}).items()
    }


def channel_hash(state: ChannelView, unique_viewers: int) -> dict[Any, str | int]:
    fields: dict[Any, str | int] = dict(state.totals.as_dict())
    fields.update(
        channel_id=state.channel_id,
        campaign=state.campaign,
        creators=",".join(state.creators),
        concurrent_viewers=max(0, state.concurrent),
        peak_concurrent_viewers=state.peak_concurrent,
        unique_viewers=unique_viewers,
        first_ts_ms=state.first_ts_ms,
        last_ts_ms=state.last_ts_ms,
        late_events=state.late_events,
        ended=int(state.ended_ms >= 0),
        active_alerts=",".join(sorted(state.alerts or ())),
        updated_at_ms=int(time.time() * 1000),
    )
    return fields


def window_hash(counters: Counters, start_ms: int, size_ms: int, final: bool) -> dict[Any, str | int]:
    fields: dict[Any, str | int] = dict(counters.as_dict())
    fields.update(window_start_ms=start_ms, window_end_ms=start_ms + size_ms, final=int(final))
    return fields


class RedisMirror:
    def __init__(self, settings: Settings, live: LiveSnapshot) -> None:
        self.live = live
        self.keys = RedisKeys(settings.redis_prefix)
        self.window_size_ms = settings.window_size_s * 1000
        self.client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self._failing = False
        self._campaigns_with_alerts: set[str] = set()

    async def flush(self) -> None:
        """Write everything pending; on failure give it back to the snapshot for the next tick."""
        dirty, viewers, closed = self.live.take_dirty()
        campaign_windows, self.live.pending_campaign = self.live.pending_campaign, []
        campaign_alerts, self.live.campaign_alerts_dirty = self.live.campaign_alerts_dirty, False
        if not dirty and not viewers and not closed and not campaign_windows and not campaign_alerts:
            return
        try:
            await self._write(dirty, viewers, closed)
            await self._write_campaign(campaign_windows, campaign_alerts)
        except Exception as exc:
            self.live.restore(dirty, viewers, closed)
            self.live.pending_campaign = campaign_windows + self.live.pending_campaign
            self.live.campaign_alerts_dirty |= campaign_alerts
            self.live.redis_errors += 1
            if not self._failing:
                log.warning("Redis write failed, will retry every tick: %r", exc)
            self._failing = True
            return
        if self._failing:
            log.info("Redis reachable again; caught up")
        self._failing = False
        self.live.redis_flushes += 1

    async def _write(self, dirty: set[str], viewers: dict[str, list[str]], closed: list[ClosedWindow]) -> None:
        keys, live = self.keys, self.live
        # The states as of now: the fold replaces (never mutates) a channel's state object after each batch, so
        # these references stay consistent with the viewer ids taken with them while the writes below await.
        states = {cid: live.channels[cid] for cid in dirty if cid in live.channels}
        windows_written = {cid: live.pending_windows[cid] for cid in states if cid in live.pending_windows}
        campaigns: dict[str, list[str]] = {}
        for channel_id, state in states.items():
            campaigns.setdefault(state.campaign, []).append(channel_id)

        # Viewers: each id once per flush into its livestream's HyperLogLog; the campaign's HyperLogLog is the union
        # of its livestreams' (PFMERGE), which gives the same registers as adding every id to it.
        merge_into: dict[str, list[str]] = {}
        pipe = self.client.pipeline(transaction=False)
        queued = 0
        for channel_id, ids in viewers.items():
            unique = list(dict.fromkeys(ids))
            for i in range(0, len(unique), PFADD_CHUNK):
                pipe.pfadd(keys.channel_viewers(channel_id), *unique[i : i + PFADD_CHUNK])
                queued += 1
            owner = states.get(channel_id) or live.channels.get(channel_id)
            if owner is not None and owner.campaign:
                merge_into.setdefault(owner.campaign, []).append(keys.channel_viewers(channel_id))
            if queued >= PIPELINE_CHUNK:
                await pipe.execute()
                queued = 0
        for campaign, sources in merge_into.items():
            target = keys.campaign(campaign, "viewers")
            for i in range(0, len(sources), MERGE_CHUNK):
                pipe.pfmerge(target, target, *sources[i : i + MERGE_CHUNK])
        await pipe.execute()
        counted = list(states)
        for i in range(0, len(counted), PIPELINE_CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for channel_id in counted[i : i + PIPELINE_CHUNK]:
                pipe.pfcount(keys.channel_viewers(channel_id))
            for channel_id, count in zip(counted[i : i + PIPELINE_CHUNK], await pipe.execute(), strict=True):
                live.unique_viewers[channel_id] = int(count)
        if campaigns:
            pipe = self.client.pipeline(transaction=False)
            for campaign in campaigns:
                pipe.pfcount(keys.campaign(campaign, "viewers"))
            for campaign, count in zip(campaigns, await pipe.execute(), strict=True):
                live.unique_viewers[f"campaign:{campaign}"] = int(count)

        pipe = self.client.pipeline(transaction=False)
        for campaign, channel_ids in campaigns.items():
            for i in range(0, len(channel_ids), PIPELINE_CHUNK):
                part = channel_ids[i : i + PIPELINE_CHUNK]
                pipe.sadd(keys.campaigns(), campaign)
                pipe.sadd(keys.campaign(campaign, "channels"), *part)
                pipe.sadd(keys.campaign(campaign, "creators"), *{c for cid in part for c in states[cid].creators})
                pipe.zadd(keys.campaign(campaign, "gmv"), {cid: states[cid].totals.gmv_vnd for cid in part})
        queued = 0
        for channel_id, state in states.items():
            pipe.hset(keys.channel(channel_id), mapping=channel_hash(state, live.unique_viewers.get(channel_id, 0)))
            active = channel_alert_records(state)
            for rule in CHANNEL_RULES:
                field = f"{rule}|{channel_id}"
                if field in active:
                    pipe.hset(keys.active_alerts(), field, msgspec.json.encode(active[field]))
                else:
                    pipe.hdel(keys.active_alerts(), field)
            for start_ms, counters in windows_written.get(channel_id, {}).items():
                key = keys.window(channel_id, start_ms)
                pipe.hset(key, mapping=window_hash(counters, start_ms, self.window_size_ms, final=False))
                pipe.expire(key, WINDOW_TTL_S)
            queued += 1
            if queued >= PIPELINE_CHUNK // 8:  # about 8 commands per livestream
                await pipe.execute()
                pipe = self.client.pipeline(transaction=False)
                queued = 0
        for window in closed:
            key = keys.window(window.channel_id, window.start_ms, window.size_ms)
            pipe.hset(key, mapping=window_hash(window.counters, window.start_ms, window.size_ms, final=True))
            pipe.expire(key, WINDOW_TTL_S)
        await pipe.execute()
        for channel_id, written in windows_written.items():
            if live.pending_windows.get(channel_id) is written:  # not replaced by a newer state meanwhile
                del live.pending_windows[channel_id]

    async def _write_campaign(self, windows: list[tuple[str, int, Counters, int]], alerts_changed: bool) -> None:
        keys, pipe = self.keys, self.client.pipeline(transaction=False)
        for campaign, start_ms, counters, livestreams in windows:
            key = keys.campaign_window(campaign, start_ms)
            fields = window_hash(counters, start_ms, self.window_size_ms, final=True)
            fields["livestreams"] = livestreams
            pipe.hset(key, mapping=fields)
            pipe.expire(key, WINDOW_TTL_S)
            pipe.zadd(keys.campaign(campaign, "windows"), {str(start_ms): start_ms})
        if alerts_changed:
            active = self.live.campaign_alerts
            for campaign in self._campaigns_with_alerts | set(active):
                field = f"gmv_milestone|{campaign}"
                record = active.get(campaign, {}).get("gmv_milestone")
                if record is not None:
                    pipe.hset(keys.active_alerts(), field, msgspec.json.encode(record))
                else:
                    pipe.hdel(keys.active_alerts(), field)
            self._campaigns_with_alerts = set(active)
        await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


def register(app: faust.App, settings: Settings, live: LiveSnapshot) -> RedisMirror:
    mirror = RedisMirror(settings, live)

    @app.task
    async def mirror_to_redis() -> None:
        """Flush when a batch changed the snapshot; flushes start at least ``redis_flush_interval_s`` apart, so a
        busy worker writes Redis a few times a second and a quiet one right after each change."""
        interval = settings.redis_flush_interval_s
        while not app.should_stop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.changed.wait(), timeout=interval)
            live.changed.clear()
            started = time.monotonic()
            await mirror.flush()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    return mirror
