"""JSON views of the worker's live snapshot: ``/api/totals`` and ``/api/channels`` (what this worker owns), and
the probes ``/readyz`` and ``/healthz`` (agents/health.py).

- ``/readyz``: 200 ``{"ready": true}`` when the worker has recovered its partitions, its processing loop is alive
  and no owned partition is stalled; else 503 ``{"ready": false, "reasons": [...], "stalled_partitions":
  {"<partition>": seconds since progress or null}}``. ``/api/totals`` ``ready`` is the same result.
- ``/healthz``: 200 ``{"alive": true}`` while the process serves and the processing loop has not died; else 503
  ``{"alive": false, "reasons": [...]}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import faust

from agents.health import liveness, readiness, stall_after, stalled_partitions
from stream.settings import Settings
from stream.snapshot import LiveSnapshot


def register(app: faust.App, settings: Settings, live: LiveSnapshot, clock: Callable[[], float] = time.time) -> None:
    stall_after_s = stall_after(settings)

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
