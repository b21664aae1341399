"""The query API ``/api/v1`` (the whole fair, from Redis; OpenAPI 3.1 document at ``/api/v1/openapi.json``), JSON
views of the worker's live snapshot: ``/api/totals`` and ``/api/channels`` (what this worker owns), and the probes
``/readyz`` and ``/healthz`` (agents/health.py).

- ``/api/v1``: see :mod:`agents.fair` for the figures and :mod:`agents.openapi` for the shapes. Errors are JSON
  ``{"error", "message"[, "parameter"]}``: 400 for a bad parameter (named), 404 for an unknown campaign or
  livestream, 503 while Redis is unreachable.

- ``/readyz``: 200 ``{"ready": true}`` when the worker has recovered its partitions, its processing loop is alive
  and no owned partition is stalled; else 503 ``{"ready": false, "reasons": [...], "stalled_partitions":
  {"<partition>": seconds since progress or null}}``. ``/api/totals`` ``ready`` is the same result.
- ``/healthz``: 200 ``{"alive": true}`` while the process serves and the processing loop has not died; else 503
  ``{"alive": false, "reasons": [...]}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import redis.asyncio as aioredis

from agents.fair import SORT_KEYS, FairReader, NotFoundError, sort_channels
from agents.health import liveness, readiness, stall_after, stalled_partitions
from agents.openapi import openapi_document
from stream.settings import Settings
from stream.snapshot import LiveSnapshot

MAX_LIMIT = 500


class BadParameterError(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def int_param(query: Any, name: str, default: int | None, low: int, high: int) -> int | None:
    """Query parameter ``name`` as an integer in ``[low, high]`` (``default`` if absent)."""
    value = query.get(name)
    if value is None:
        return default
    try:
        number = int(value, 10)
    except ValueError:
        raise BadParameterError(name, f"{name} must be an integer, got {value!r}") from None
    if not low <= number <= high:
        raise BadParameterError(name, f"{name} must be between {low} and {high}, got {number}")
    return number


def choice_param(query: Any, name: str, default: str, choices: list[str]) -> str:
    value = query.get(name, default)
    if value not in choices:
        raise BadParameterError(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def encode_cursor(sort: str, order: str, value: int, channel_id: str) -> str:
    raw = json.dumps([sort, order, value, channel_id], ensure_ascii=False, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, order: str) -> tuple[int, str]:
    """(sort value, livestream id) of the last item of the previous page."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        got_sort, got_order, value, channel_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise BadParameterError("cursor", "cursor is not a next_cursor of this API") from None
    if (got_sort, got_order) != (sort, order) or not isinstance(value, int) or not isinstance(channel_id, str):
        raise BadParameterError(
            "cursor", "cursor belongs to another sort or order, or is not a next_cursor of this API"
        )
    return value, channel_id


def page_of(channels: list[dict[str, Any]], query: Any) -> dict[str, Any]:
    """One page of ``/api/v1/channels``: keyset pagination on (sort value, livestream id)."""
    sort = choice_param(query, "sort", "gmv", list(SORT_KEYS))
    order = choice_param(query, "order", "desc", ["asc", "desc"])
    limit = int_param(query, "limit", 50, 1, MAX_LIMIT) or 50
    field, sign = SORT_KEYS[sort], -1 if order == "desc" else 1
    ordered = sort_channels(channels, sort, order == "desc")
    cursor = query.get("cursor")
    if cursor is not None:
        value, after = decode_cursor(cursor, sort, order)
        ordered = [c for c in ordered if (sign * c[field], c["channel_id"]) > (sign * value, after)]
    page = ordered[:limit]
    more = len(ordered) > limit
    last = page[-1] if page else None
    return {
        "items": page,
        "next_cursor": encode_cursor(sort, order, last[field], last["channel_id"]) if more and last else None,
        "total": len(channels),
        "sort": sort,
        "order": order,
        "limit": limit,
    }


def register_v1(app: faust.App, settings: Settings) -> FairReader:
    """The query API ``/api/v1`` (module docstring)."""
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    reader = FairReader(client, settings)
    document = openapi_document()

    async def answer(web: Any, produce: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return web.json(await produce())
        except BadParameterError as exc:
            return web.json({"error": "bad_parameter", "parameter": exc.parameter, "message": str(exc)}, status=400)
        except NotFoundError as exc:
            return web.json({"error": "not_found", "message": str(exc.args[0])}, status=404)
        except (OSError, aioredis.RedisError) as exc:
            return web.json({"error": "unavailable", "message": f"Redis: {exc!r}"}, status=503)

    @app.page("/api/v1/openapi.json")
    async def openapi(web: Any, request: Any) -> Any:
        return web.json(document)

    @app.page("/api/v1/campaigns")
    async def campaigns(web: Any, request: Any) -> Any:
        async def produce() -> Any:
            return {"items": [await reader.campaign(name, minutes=0) for name in await reader.campaign_names()]}

        return await answer(web, produce)

    @app.page("/api/v1/campaigns/{campaign_id}")
    async def campaign(web: Any, request: Any, campaign_id: str) -> Any:
        async def produce() -> Any:
            minutes = int_param(request.query, "minutes", None, 1, 1_000_000)
            return await reader.campaign(campaign_id, minutes)

        return await answer(web, produce)

    @app.page("/api/v1/channels")
    async def channels(web: Any, request: Any) -> Any:
        async def produce() -> Any:
            windows = int_param(request.query, "windows", 0, 0, 60) or 0
            page = page_of(await reader.channels(request.query.get("campaign")), request.query)
            if windows:
                sparks = await reader.sparks(page["items"], windows)
                for item in page["items"]:
                    item["spark"] = sparks[item["channel_id"]]
            return page

        return await answer(web, produce)

    @app.page("/api/v1/channels/{channel_id}")
    async def channel(web: Any, request: Any, channel_id: str) -> Any:
        async def produce() -> Any:
            windows = int_param(request.query, "windows", 30, 1, 1440) or 30
            return await reader.channel(channel_id, windows)

        return await answer(web, produce)

    @app.page("/api/v1/alerts")
    async def alerts(web: Any, request: Any) -> Any:
        async def produce() -> Any:
            return {"items": await reader.active_alerts()}

        return await answer(web, produce)

    @app.page("/api/v1/alerts/history")
    async def alert_history(web: Any, request: Any) -> Any:
        async def produce() -> Any:
            campaign, channel = request.query.get("campaign"), request.query.get("channel")
            items = [
                a
                for a in await reader.alert_history()
                if (campaign is None or a["campaign"] == campaign) and (channel is None or a["channel_id"] == channel)
            ]
            return {"items": items}

        return await answer(web, produce)

    return reader


def register(app: faust.App, settings: Settings, live: LiveSnapshot, clock: Callable[[], float] = time.time) -> None:
    stall_after_s = stall_after(settings)
    register_v1(app, settings)

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        now = clock()
        ok, reasons = readiness(live, now, stall_after_s)
        if ok:
            return web.json({"ready": True})
        stalled = {
            str(partition): None if math.isinf(age) else round(age, 3)
            for partition, age in stalled_partitions(live, now, stall_after_s).items()
        }
        return web.json({"ready": False, "reasons": reasons, "stalled_partitions": stalled}, status=503)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        ok, reasons = liveness(live)
        if ok:
            return web.json({"alive": True})
        return web.json({"alive": False, "reasons": reasons}, status=503)

    @app.page("/api/totals")
    async def totals(web: Any, request: Any) -> Any:
        return web.json(
            {
                **live.totals().as_dict(),
                "ready": readiness(live, clock(), stall_after_s)[0],
                "livestreams": len(live.channels),
                "creators": len({c for s in live.channels.values() for c in s.creators}),
                "concurrent_viewers": live.concurrent_viewers(),
                "records_processed": live.records_processed,
                "events_processed": live.events_processed,
                "dead_letters": dict(live.dead_letters),
            }
        )

    @app.page("/api/channels")
    async def channels(web: Any, request: Any) -> Any:
        return web.json(
            {
                cid: {
                    **s.totals.as_dict(),
                    "concurrent_viewers": max(0, s.concurrent),
                    "peak_concurrent_viewers": s.peak_concurrent,
                    "creators": s.creators,
                    "unique_viewers": live.unique_viewers.get(cid, 0),
                }
                for cid, s in sorted(live.channels.items())
            }
        )
