"""JSON views of the worker's live snapshot: ``/api/totals`` and ``/api/channels`` (what this worker owns)."""

from __future__ import annotations

from typing import Any

import faust

from stream.settings import Settings
from stream.snapshot import LiveSnapshot


def register(app: faust.App, settings: Settings, live: LiveSnapshot) -> None:
    @app.page("/api/totals")
    async def totals(web: Any, request: Any) -> Any:
        return web.json(
            {
                **live.totals().as_dict(),
                "ready": live.ready,
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
