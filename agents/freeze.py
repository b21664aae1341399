"""A worker whose *process* stood still longer than its group session can survive must not act on what it held.

A process that is stopped (SIGSTOP, a VM or container pause, a host stalled on swap) keeps its partitions in its own
view while the group coordinator, after the session timeout, gives them to another worker. When it runs again it
would finish the batch it held: save states and a cursor for partitions now owned elsewhere, publish windows, write
stale counters to Redis; and its local RocksDB would record changelog offsets past the new owner's writes, so that
a later recovery skipped them. Without Kafka transactions such a zombie cannot be fenced by the broker, so the
worker fences itself.

What counts as a stop is measured by a daemon *thread*, not by the event loop: the thread wakes every
:data:`BEAT_S` and notes the monotonic time. A busy event loop (a long fold of large envelopes, a resync of every
owned state) does not hold the thread back for long (the interpreter hands the GIL over every few milliseconds), and
faust's consumer thread keeps heartbeating all that time, so a busy worker keeps its partitions and must not die.
A stopped process stops every thread: when it runs again, the gap between the thread's beats is as long as the stop.

- when the beat thread sees a gap over ``limit_s`` (the session timeout less one heartbeat interval less a second,
  so that membership cannot have been lost undetected), it marks the guard tripped (sticky) and ends the process;
- every side effect (saving states, publishing windows, alerts and campaign copies, a Redis flush) first calls
  :meth:`FreezeGuard.check`, which ends the process if the guard tripped or the thread has not beaten for
  ``limit_s`` (after a stop the loop may run before the thread does);
- ending means: the local table state is discarded and the process exits with :data:`EXIT_FROZEN`. Restarted
  (by its supervisor), it restores its tables from the changelogs and reprocesses from the group's committed
  offsets; what its producer had already buffered before the stop is repaired there (the restored cursor of a
  partition is then behind the committed offset, and the records in between are read again; livestreams whose
  state is newer skip them).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

BEAT_S = 0.25
EXIT_FROZEN = 75
"""Exit status of a worker that fenced itself after a freeze (EX_TEMPFAIL: restart it)."""


class FreezeGuard:
    """Detects that the process stood still for ``limit_s`` and then exits it (see the module)."""

    def __init__(self, limit_s: float, tables_dir: Path | None) -> None:
        self.limit_s = limit_s
        self.tables_dir = tables_dir
        self.last_beat = time.monotonic()
        self.armed = False
        """Set when the beat thread runs; before that :meth:`check` does nothing (tests of the pure parts)."""
        self.stood_still_s: float | None = None
        """The stop the beat thread saw (sticky once set)."""
        self.longest_gap_s = 0.0
        """Longest gap between two beats seen so far (a stall figure for logs and metrics)."""
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Before a side effect: exit if the process stood still too long (seen by the beat thread, or the thread
        itself has not run since)."""
        if not self.armed:
            return
        if self.stood_still_s is not None:
            self.trip(self.stood_still_s)
        silent = time.monotonic() - self.last_beat
        if silent > self.limit_s:
            self.trip(silent)

    def beat(self, now: float | None = None) -> None:
        """One beat of the thread: a gap since the previous one over the limit trips the guard."""
        now = time.monotonic() if now is None else now
        gap = now - self.last_beat
        self.longest_gap_s = max(self.longest_gap_s, gap)
        if gap > self.limit_s:
            self.stood_still_s = gap
            self.trip(gap)
        self.last_beat = now

    def start(self) -> None:
        """Arm the guard and start its beat thread (once)."""
        if self._thread is not None:
            return
        self.last_beat = time.monotonic()
        self.armed = True
        self._thread = threading.Thread(target=self._beat_forever, name="freeze-guard", daemon=True)
        self._thread.start()

    def _beat_forever(self) -> None:
        while True:
            time.sleep(BEAT_S)
            self.beat()

    def trip(self, stood_still: float) -> None:
        log.critical(
            "the process stood still for %.1f s (limit %.1f s): the group may have given this worker's "
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


def install(data_dir: Path, session_timeout_s: float, heartbeat_interval_s: float) -> None:
    """Arm :data:`GUARD` for a worker and start its beat thread."""
    GUARD.limit_s = max(1.0, session_timeout_s - heartbeat_interval_s - 1.0)
    GUARD.tables_dir = data_dir / "v1" / "tables"
    GUARD.start()
