"""Reads the serving layer back from Redis (key layout in ``agents.redis_mirror``): what ops tools and tests see."""

from __future__ import annotations

import json
from typing import Any

import redis
from redis.exceptions import ResponseError

from schemas.redis_keys import RedisKeys, parse_hash
from stream.state import COUNTER_FIELDS


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


SUMMARY_KEYS = ("views", "orders", "gmv_vnd", "livestreams", "creators")


def read_channels(client: redis.Redis, prefix: str, campaign: str) -> dict[str, dict[str, Any]]:
    """Every livestream hash of a campaign, by livestream id; integer fields parsed, ids left as text. A
    livestream whose key cannot be read (stale data of another type) is ``{"error": <Redis's answer>}``."""
    keys = RedisKeys(prefix)
    channel_ids = sorted(_text(m) for m in client.smembers(keys.campaign(campaign, "channels")))
    pipe = client.pipeline(transaction=False)
    for channel_id in channel_ids:
        pipe.hgetall(keys.channel(channel_id))
    return {
        channel_id: {"error": str(raw)} if isinstance(raw, ResponseError) else parse_hash(raw)
        for channel_id, raw in zip(channel_ids, pipe.execute(raise_on_error=False), strict=True)
    }


def read_campaign(client: redis.Redis, prefix: str, campaign: str) -> dict[str, int]:
    """Campaign totals: the sum of its livestreams' counters, plus distinct livestreams, creators, viewers."""
    keys = RedisKeys(prefix)
    channels = read_channels(client, prefix, campaign)
    totals = {name: sum(int(c.get(name, 0)) for c in channels.values()) for name in COUNTER_FIELDS}
    totals["concurrent_viewers"] = sum(int(c.get("concurrent_viewers", 0)) for c in channels.values())
    totals["livestreams"] = len(channels)
    totals["creators"] = int(client.scard(keys.campaign(campaign, "creators")))
    totals["unique_viewers"] = int(client.pfcount(keys.campaign(campaign, "viewers")))
    return totals


def summary(totals: dict[str, int]) -> dict[str, int]:
    """The five headline figures of a fair, named as in ``make demo ARGS=--once``."""
    return {
        "views": totals["views"],
        "orders": totals["orders_paid"],
        "gmv_vnd": totals["gmv_vnd"],
        "livestreams": totals["livestreams"],
        "creators": totals["creators"],
    }


def campaigns(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(_text(m) for m in client.smembers(RedisKeys(prefix).campaigns()))


def read_active_alerts(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Active operator alerts (``<prefix>alerts:active``), oldest first."""
    raw = client.hgetall(RedisKeys(prefix).active_alerts())
    alerts = [json.loads(value) for value in raw.values()]
    return sorted(alerts, key=lambda a: (a["at_ms"], a["alert_id"]))
