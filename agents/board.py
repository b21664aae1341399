"""The ops board: ``/`` (a live web page for operators) and ``/api/board`` (its data), served by every worker.

The data comes from Redis, the serving layer, not from the worker's own snapshot, so any worker shows the whole
fair whichever partitions it owns. The page polls ``/api/board`` every second; nothing is pushed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
import msgspec
import redis.asyncio as aioredis

from schemas.redis_keys import RedisKeys, parse_hash
from stream.settings import Settings
from stream.state import COUNTER_FIELDS

BOARD_HTML = (Path(__file__).with_name("board.html")).read_text(encoding="utf-8")
RECENT_MINUTES = 30


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def board_data(client: aioredis.Redis, keys: RedisKeys, campaign: str | None) -> dict[str, Any]:
    """Everything the board shows for ``campaign`` (default: the campaign with the most GMV)."""
    campaigns = sorted(_text(c) for c in await client.smembers(keys.campaigns()))
    if not campaigns:
        return {"campaigns": [], "campaign": None}
    if campaign not in campaigns:
        pipe = client.pipeline(transaction=False)
        for name in campaigns:
            pipe.zrange(keys.campaign(name, "gmv"), 0, -1, withscores=True)
        rows = await pipe.execute()
        gmv = {name: sum(score for _, score in found) for name, found in zip(campaigns, rows, strict=True)}
        campaign = max(campaigns, key=lambda name: (gmv[name], name))
    channel_ids = sorted(_text(m) for m in await client.smembers(keys.campaign(campaign, "channels")))
    pipe = client.pipeline(transaction=False)
    for channel_id in channel_ids:
        pipe.hgetall(keys.channel(channel_id))
    pipe.scard(keys.campaign(campaign, "creators"))
    pipe.pfcount(keys.campaign(campaign, "viewers"))
    pipe.hgetall(keys.active_alerts())
    pipe.zrevrange(keys.campaign(campaign, "windows"), 0, RECENT_MINUTES - 1)
    results = await pipe.execute(raise_on_error=False)
    for result in results[len(channel_ids) :]:
        if isinstance(result, Exception):
            raise result
    # A livestream whose hash cannot be read (stale data of another type under its key) shows as its id.
    channels = [
        {"channel_id": cid, "error": str(raw)} if isinstance(raw, Exception) else parse_hash(raw)
        for cid, raw in zip(channel_ids, results[: len(channel_ids)], strict=True)
    ]
    creators, unique_viewers, raw_alerts, starts = results[len(channel_ids) :]
    totals = {name: sum(int(c.get(name, 0)) for c in channels) for name in COUNTER_FIELDS}
    totals.update(
        concurrent_viewers=sum(int(c.get("concurrent_viewers", 0)) for c in channels),
        livestreams=len(channels),
        live_now=sum(1 for c in channels if not c.get("ended")),
        creators=int(creators),
        unique_viewers=int(unique_viewers),
    )
    alerts = [msgspec.json.decode(value) for value in raw_alerts.values()]
    alerts = sorted((a for a in alerts if a.get("campaign") == campaign), key=lambda a: (a["at_ms"], a["alert_id"]))
    pipe = client.pipeline(transaction=False)
    ordered = sorted(int(_text(s)) for s in starts)
    for start in ordered:
        pipe.hgetall(keys.campaign_window(campaign, start))
    minutes = [parse_hash(raw) for raw in await pipe.execute()] if ordered else []
    channels.sort(key=lambda c: (-int(c.get("gmv_vnd", 0)), str(c.get("channel_id", ""))))
    return {
        "campaigns": campaigns,
        "campaign": campaign,
        "totals": totals,
        "channels": channels,
        "alerts": alerts,
        "minutes": [m for m in minutes if m],
    }


def register(app: faust.App, settings: Settings, live: Any) -> None:
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    keys = RedisKeys(settings.redis_prefix)

    @app.page("/")
    async def board(web: Any, request: Any) -> Any:
        return web.html(BOARD_HTML)

    @app.page("/api/board")
    async def data(web: Any, request: Any) -> Any:
        try:
            return web.json(await board_data(client, keys, request.query.get("campaign")))
        except Exception as exc:  # Redis down: say so, the page keeps polling
            return web.json({"error": f"Redis: {exc!r}"}, status=503)
