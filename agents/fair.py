"""The fair as the query API (``/api/v1``), the board and ``livestream status`` see it: read from Redis, the serving
layer (key layout in :mod:`agents.redis_mirror`), so any worker answers for every livestream of every campaign.

Derived figures (documented in docs/contracts.md, "Query API"):

- ``status``: ``ended`` (the livestream sent ``live_end``), ``silent`` (not ended, and its newest event is more
  than ``silent_after_s`` behind the newest event of its campaign, or its Redis hash was not updated for that long
  by wall clock), else ``live``. ``watching_now`` is the concurrent viewers (views - leaves, at least 0) of a live
  livestream and 0 for an ended or silent one; ``concurrent_viewers`` stays the raw counter.
- ``gmv_usd``: ``gmv_vnd / vnd_per_usd`` rounded to cents; ``gpm_vnd``: GMV per 1,000 views,
  ``gmv_vnd * 1000 // views`` (0 without views); ``conversion``: paid orders per unique viewer, rounded to 6
  decimals (:func:`stream.state.conversion_rate`, as the Grafana boards' ``fair:livestream_conversion:ratio``).
- Campaign minutes: the final campaign windows (``P campaign:<c>:w1m:<start>``), each with ``gmv_to_date_vnd``,
  the running sum of the minutes before it and itself.
- A livestream's windows: its last ``n`` 1-minute windows ending with the minute of its newest event, a minute
  without events as zeros (``final`` tells whether the window is closed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio as aioredis

from schemas.redis_keys import RedisKeys, parse_hash
from stream.settings import Settings
from stream.state import COUNTER_FIELDS, conversion_rate

MINUTE_MS = 60_000
SORT_KEYS = {"gmv": "gmv_vnd", "orders": "orders_paid", "viewers": "unique_viewers", "concurrent": "watching_now"}
"""``sort=`` of ``/api/v1/channels`` and ``livestream status --sort`` -> the field sorted on."""


class NotFoundError(LookupError):
    """A campaign or livestream that is not in Redis."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Derive:
    """Figures derived from the counters (module docstring)."""

    vnd_per_usd: float
    silent_after_ms: int

    @classmethod
    def of(cls, settings: Settings) -> Derive:
        return cls(settings.vnd_per_usd, int(settings.silent_after_s * 1000))

    def usd(self, vnd: int) -> float:
        return round(vnd / self.vnd_per_usd, 2)

    def money(self, into: dict[str, Any], unique_viewers: int) -> dict[str, Any]:
        views, gmv, paid = int(into.get("views", 0)), int(into.get("gmv_vnd", 0)), int(into.get("orders_paid", 0))
        into["gmv_usd"] = self.usd(gmv)
        into["gpm_vnd"] = gmv * 1000 // views if views > 0 else 0
        into["gpm_usd"] = self.usd(into["gpm_vnd"])
        into["conversion"] = round(conversion_rate(paid, unique_viewers), 6)
        return into

    def channel(self, raw: dict[str, Any], clock_ms: int, now_ms: int) -> dict[str, Any]:
        """A livestream hash as the API shows it."""
        ended = bool(raw.get("ended"))
        last_ts = int(raw.get("last_ts_ms", -1))
        updated = int(raw.get("updated_at_ms", now_ms))
        silent = not ended and (clock_ms - last_ts > self.silent_after_ms or now_ms - updated > self.silent_after_ms)
        concurrent = max(0, int(raw.get("concurrent_viewers", 0)))
        out: dict[str, Any] = {
            "channel_id": str(raw.get("channel_id", "")),
            "campaign": str(raw.get("campaign", "")),
            "creators": [c for c in str(raw.get("creators", "")).split(",") if c],
            "status": "ended" if ended else "silent" if silent else "live",
            "ended": ended,
            "silent": silent,
            **{name: int(raw.get(name, 0)) for name in COUNTER_FIELDS},
            "unique_viewers": int(raw.get("unique_viewers", 0)),
            "concurrent_viewers": concurrent,
            "watching_now": 0 if ended or silent else concurrent,
            "peak_concurrent_viewers": int(raw.get("peak_concurrent_viewers", 0)),
            "first_ts_ms": int(raw.get("first_ts_ms", -1)),
            "last_ts_ms": last_ts,
            "late_events": int(raw.get("late_events", 0)),
            "active_alerts": [a for a in str(raw.get("active_alerts", "")).split(",") if a],
            "updated_at_ms": updated,
        }
        return self.money(out, out["unique_viewers"])


class FairReader:
    """Reads campaigns, livestreams, windows and alerts from Redis (async client, pipelined)."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.keys = RedisKeys(settings.redis_prefix)
        self.derive = Derive.of(settings)

    async def campaign_names(self) -> list[str]:
        return sorted(_text(c) for c in await self.client.smembers(self.keys.campaigns()))

    async def raw_channels(self, campaign: str) -> list[dict[str, Any]]:
        """Every livestream hash of ``campaign`` that can be read, by id order."""
        ids = sorted(_text(m) for m in await self.client.smembers(self.keys.campaign(campaign, "channels")))
        pipe = self.client.pipeline(transaction=False)
        for channel_id in ids:
            pipe.hgetall(self.keys.channel(channel_id))
        rows = await pipe.execute(raise_on_error=False) if ids else []
        return [parse_hash(raw) for raw in rows if isinstance(raw, dict) and raw]

    async def channels(self, campaign: str | None = None, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Livestreams of ``campaign`` (default: every campaign), derived figures included.

        Raises :class:`NotFoundError` for a campaign that is not in Redis."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        names = await self.campaign_names()
        if campaign is not None:
            if campaign not in names:
                raise NotFoundError(f"campaign {campaign!r} not found")
            names = [campaign]
        out: list[dict[str, Any]] = []
        for name in names:
            raws = await self.raw_channels(name)
            clock = max((int(r.get("last_ts_ms", -1)) for r in raws), default=-1)
            out.extend(self.derive.channel(raw, clock, now_ms) for raw in raws)
        return out

    async def campaign(self, campaign: str, minutes: int | None = None) -> dict[str, Any]:
        """Totals, derived figures and the final minutes (the last ``minutes``, default all) of a campaign."""
        channels = await self.channels(campaign)
        pipe = self.client.pipeline(transaction=False)
        pipe.scard(self.keys.campaign(campaign, "creators"))
        pipe.pfcount(self.keys.campaign(campaign, "viewers"))
        pipe.zrange(self.keys.campaign(campaign, "windows"), 0, -1)
        creators, unique_viewers, starts = await pipe.execute()
        ordered = sorted(int(_text(s)) for s in starts)
        pipe = self.client.pipeline(transaction=False)
        for start in ordered:
            pipe.hgetall(self.keys.campaign_window(campaign, start))
        rows = [parse_hash(raw) for raw in await pipe.execute()] if ordered else []
        to_date = 0
        windows: list[dict[str, Any]] = []
        for start, row in zip(ordered, rows, strict=True):
            if not row:
                continue  # expired
            to_date += int(row.get("gmv_vnd", 0))
            window: dict[str, Any] = {
                "window_start_ms": start,
                "window_end_ms": int(row.get("window_end_ms", start + MINUTE_MS)),
                "livestreams": int(row.get("livestreams", 0)),
                **{name: int(row.get(name, 0)) for name in COUNTER_FIELDS},
                "gmv_to_date_vnd": to_date,
            }
            window["gmv_usd"] = self.derive.usd(window["gmv_vnd"])
            window["gmv_to_date_usd"] = self.derive.usd(to_date)
            windows.append(window)
        totals: dict[str, Any] = {name: sum(c[name] for c in channels) for name in COUNTER_FIELDS}
        self.derive.money(totals, int(unique_viewers))
        alerts = [a for a in await self.active_alerts() if a["campaign"] == campaign]
        clock = max((c["last_ts_ms"] for c in channels), default=-1)
        return {
            "campaign": campaign,
            "totals": totals,
            "unique_viewers": int(unique_viewers),
            "creators": int(creators),
            "livestreams": len(channels),
            "live": sum(1 for c in channels if c["status"] == "live"),
            "silent": sum(1 for c in channels if c["status"] == "silent"),
            "ended": sum(1 for c in channels if c["status"] == "ended"),
            "watching_now": sum(c["watching_now"] for c in channels),
            "clock_ms": clock,
            "gmv_to_date_vnd": to_date,
            "gmv_to_date_usd": self.derive.usd(to_date),
            "final_minutes": len(windows),
            "minutes": windows if minutes is None else windows[max(0, len(windows) - minutes) :],
            "active_alerts": len(alerts),
        }

    async def channel(self, channel_id: str, windows: int = 30) -> dict[str, Any]:
        """One livestream: counters, derived figures, its last ``windows`` 1-minute windows, its alerts."""
        raw = await self.client.hgetall(self.keys.channel(channel_id))
        if not raw:
            raise NotFoundError(f"livestream {channel_id!r} not found")
        fields = parse_hash(raw)
        campaign = str(fields.get("campaign", ""))
        peers = await self.raw_channels(campaign) if campaign else [fields]
        clock = max((int(r.get("last_ts_ms", -1)) for r in peers), default=-1)
        out = self.derive.channel(fields, clock, int(time.time() * 1000))
        out["windows"] = (await self.sparks([out], windows, full=True))[out["channel_id"]]
        out["alerts"] = [a for a in await self.active_alerts() if a["channel_id"] == channel_id]
        out["alert_history"] = [a for a in await self.alert_history() if a["channel_id"] == channel_id]
        return out

    async def sparks(
        self, channels: list[dict[str, Any]], n: int, full: bool = False
    ) -> dict[str, list[dict[str, Any]]]:
        """The last ``n`` 1-minute windows of each livestream, oldest first, by livestream id; ``full``: every
        counter, else only ``gmv_vnd`` and ``views``."""
        plan: list[tuple[str, int]] = []
        for c in channels:
            last = c["last_ts_ms"]
            if last < 0 or n <= 0:
                continue
            newest = last - last % MINUTE_MS
            first = c["first_ts_ms"] - c["first_ts_ms"] % MINUTE_MS
            plan.extend(
                (c["channel_id"], s) for s in range(max(first, newest - (n - 1) * MINUTE_MS), newest + 1, MINUTE_MS)
            )
        pipe = self.client.pipeline(transaction=False)
        names = ("final", *COUNTER_FIELDS) if full else ("final", "gmv_vnd", "views")
        for channel_id, start in plan:
            pipe.hmget(self.keys.window(channel_id, start), names)
        rows = await pipe.execute(raise_on_error=False) if plan else []
        out: dict[str, list[dict[str, Any]]] = {c["channel_id"]: [] for c in channels}
        for (channel_id, start), row in zip(plan, rows, strict=True):
            values = row if isinstance(row, list) else [None] * len(names)
            window: dict[str, Any] = {"window_start_ms": start, "window_end_ms": start + MINUTE_MS}
            for name, value in zip(names, values, strict=True):
                number = int(_text(value)) if value is not None else 0
                window[name] = bool(number) if name == "final" else number
            if full:
                window["gmv_usd"] = self.derive.usd(window["gmv_vnd"])
            out[channel_id].append(window)
        return out

    async def active_alerts(self) -> list[dict[str, Any]]:
        """Active alerts, oldest first, each with ``age_s``: seconds of event time since it fired, against its
        campaign's newest event (the fair's clock)."""
        raw = await self.client.hgetall(self.keys.active_alerts())
        alerts = sorted((msgspec.json.decode(v) for v in raw.values()), key=lambda a: (a["at_ms"], a["alert_id"]))
        clocks: dict[str, int] = {}
        for alert in alerts:
            campaign = alert["campaign"]
            if campaign not in clocks:
                raws = await self.raw_channels(campaign)
                clocks[campaign] = max((int(r.get("last_ts_ms", -1)) for r in raws), default=-1)
            alert["age_s"] = max(0, clocks[campaign] - alert["at_ms"]) // 1000
        return alerts

    async def alert_history(self) -> list[dict[str, Any]]:
        """Every alert the mirror saw, firing or resolved, in order of firing. An alert recorded as firing that is
        no longer active (its resolution happened while no mirror was watching) shows as resolved."""
        keys = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.alert_history())
        pipe.hgetall(keys.active_alerts())
        history, active = await pipe.execute()
        active_ids = {msgspec.json.decode(v)["alert_id"] for v in active.values()}
        out = []
        for value in history.values():
            entry = msgspec.json.decode(value)
            if entry["status"] == "firing" and entry["alert_id"] not in active_ids:
                entry["status"] = "resolved"
            entry.setdefault("resolved_at_ms", None)
            out.append(entry)
        return sorted(out, key=lambda a: (a["at_ms"], a["alert_id"]))


def sort_channels(channels: list[dict[str, Any]], sort: str, descending: bool) -> list[dict[str, Any]]:
    """Livestreams ordered by ``SORT_KEYS[sort]`` (or any numeric field), ties by id ascending."""
    name = SORT_KEYS.get(sort, sort)
    sign = -1 if descending else 1
    return sorted(channels, key=lambda c: (sign * c[name], c["channel_id"]))
