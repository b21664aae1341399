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
- Kafka's producer checks too, right before it writes a produce request (:func:`guard_produce_requests`): the
  records it held when the process stopped (changelog rows of states the new owner has since moved past) must not
  reach the broker after the takeover, where compaction and recovery would take them as the newest;
- ending is fast, so that nothing else runs meanwhile: the local table directory is renamed aside (one system
  call; a worker deletes such directories when it starts) and the process exits with :data:`EXIT_FROZEN`. Restarted
  (by its supervisor), it restores its tables from the changelogs and reprocesses from the group's committed
  offsets; what its producer had already buffered before the stop is repaired there (the restored cursor of a
  partition is then behind the committed offset, and the records in between are read again; livestreams whose
  state is newer skip them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

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
        """Discard the local tables and exit at once (see the module)."""
        if self.tables_dir is not None:
            with contextlib.suppress(OSError):
                os.rename(self.tables_dir, discarded_name(self.tables_dir))
        message = (
            f"the process stood still for {stood_still:.1f} s (limit {self.limit_s:.1f} s): the group may have "
            "given this worker's partitions to another; exiting without saving or publishing anything more, local "
            "table state discarded (restored from the changelogs on restart)\n"
        )
        with contextlib.suppress(OSError):
            os.write(2, f"[CRITICAL] {message}".encode())
        os._exit(EXIT_FROZEN)


def discarded_name(tables_dir: Path) -> Path:
    return tables_dir.with_name(f"{tables_dir.name}.discarded-{os.getpid()}-{time.time_ns()}")


def remove_discarded(tables_dir: Path) -> None:
    """Delete table directories a fenced worker renamed aside (at start, before the tables open)."""
    for folder in tables_dir.parent.glob(f"{tables_dir.name}.discarded-*"):
        log.info("removing local table state discarded after a stop: %s", folder)
        shutil.rmtree(folder, ignore_errors=True)


def guard_produce_requests() -> None:
    """Make aiokafka's producer check :data:`GUARD` right before each produce request it writes (once)."""
    from aiokafka.producer import sender

    handler = sender.SendProduceReqHandler
    if getattr(handler.do, "freeze_guarded", False):
        return
    unguarded = handler.do

    async def do(self: Any, node_id: int) -> Any:
        GUARD.check()
        return await unguarded(self, node_id)

    do.freeze_guarded = True  # type: ignore[attr-defined]
    handler.do = do


GUARD = FreezeGuard(limit_s=float("inf"), tables_dir=None)
"""The worker's guard (configured by :func:`install`); inert until then, as in tests of the pure parts."""


def install(data_dir: Path, session_timeout_s: float, heartbeat_interval_s: float) -> None:
    """Arm :data:`GUARD` for a worker and start its beat thread."""
    GUARD.limit_s = max(1.0, session_timeout_s - heartbeat_interval_s - 1.0)
    GUARD.tables_dir = data_dir / "v1" / "tables"
    remove_discarded(GUARD.tables_dir)
    guard_produce_requests()
    GUARD.start()
