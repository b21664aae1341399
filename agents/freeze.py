"""A worker whose event loop stood still longer than its group session can survive must not act on what it held.

A process that is stopped (SIGSTOP, a VM or container pause, a host stalled on swap) keeps its partitions in its own
view while the group coordinator, after the session timeout, gives them to another worker. When it runs again it
would finish the batch it held: save states and a cursor for partitions now owned elsewhere, publish windows, write
stale counters to Redis; and its local RocksDB would record changelog offsets past the new owner's writes, so that
a later recovery skipped them. Without Kafka transactions such a zombie cannot be fenced by the broker, so the
worker fences itself:

- a watchdog task notes the loop's time every :data:`TICK_S`; every side effect (saving states, publishing
  windows, alerts and campaign copies, a Redis flush) first calls :meth:`FreezeGuard.check`;
- when the loop did not run for ``limit_s`` (set below the session timeout less one heartbeat interval, so that
  membership cannot have been lost undetected), the worker discards its local table state and exits at once with
  :data:`EXIT_FROZEN`, before any further side effect. Restarted (by its supervisor), it restores its tables from
  the changelogs and reprocesses from the group's committed offsets; what its producer had already buffered before
  the stop is repaired there (the restored cursor of a partition is then behind the committed offset, and the
  records in between are read again; livestreams whose state is newer skip them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

TICK_S = 0.5
EXIT_FROZEN = 75
"""Exit status of a worker that fenced itself after a freeze (EX_TEMPFAIL: restart it)."""


class FreezeGuard:
    """Detects that the event loop stood still for ``limit_s`` and then exits the process (see the module)."""

    def __init__(self, limit_s: float, tables_dir: Path | None) -> None:
        self.limit_s = limit_s
        self.tables_dir = tables_dir
        self.last_tick = time.monotonic()
        self.armed = False
        """Set when the watchdog runs: the worker's start (imports, Kafka checks, recovery) is not a stall."""

    def check(self) -> None:
        """Before a side effect: exit if the loop stood still too long since the watchdog last ran."""
        if not self.armed:
            return
        stood_still = time.monotonic() - self.last_tick
        if stood_still > self.limit_s:
            self.trip(stood_still)

    async def watch(self) -> None:
        """The watchdog task (runs for the worker's lifetime; the guard is armed from its first tick)."""
        self.last_tick = time.monotonic()
        self.armed = True
        try:
            while True:
                self.check()
                self.last_tick = time.monotonic()
                await asyncio.sleep(TICK_S)
        finally:
            self.armed = False

    def trip(self, stood_still: float) -> None:
        log.critical(
            "the event loop stood still for %.1f s (limit %.1f s): the group may have given this worker's "
            "partitions to another; exiting without saving or publishing anything more, local table state "
            "discarded (restored from the changelogs on restart)",
            stood_still,
            self.limit_s,
        )
        if self.tables_dir is not None:
            shutil.rmtree(self.tables_dir, ignore_errors=True)
        logging.shutdown()
        os._exit(EXIT_FROZEN)


GUARD = FreezeGuard(limit_s=float("inf"), tables_dir=None)
"""The worker's guard (configured by :func:`install`); inert until then, as in tests of the pure parts."""


def install(app: object, data_dir: Path, session_timeout_s: float, heartbeat_interval_s: float) -> None:
    """Arm :data:`GUARD` for a worker and run its watchdog as an app task."""
    GUARD.limit_s = max(1.0, session_timeout_s - heartbeat_interval_s - 1.0)
    GUARD.tables_dir = data_dir / "v1" / "tables"

    async def freeze_watchdog() -> None:
        await GUARD.watch()

    app.task(freeze_watchdog)  # type: ignore[attr-defined]
