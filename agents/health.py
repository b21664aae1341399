"""Worker health from the live snapshot: stalled partitions, readiness and liveness (pure, no faust).

A partition that stops being processed must never look healthy. An owned events partition is *stalled* when
records wait on it (``lag > 0``) and it has made no progress (processed a record, or was seen caught up) for
longer than ``stall_after_s``. A caught-up partition that has been quiet for a long time is not stalled: there is
nothing to process. The worker is *ready* when it has recovered its partitions, its processing loop is alive and
no owned partition is stalled; it is *alive* while its processing loop has not died.

``/readyz``, ``/healthz`` and the ``ready`` field of ``/api/totals`` (agents/api.py) and the
``livestream_partition_stalled`` / ``livestream_worker_ready`` metrics (agents/metrics.py) all read these
functions, so they always agree.
"""

from __future__ import annotations

import math
from typing import Any

from stream.snapshot import LiveSnapshot

DEFAULT_STALL_AFTER_S = 60.0
"""Default of ``stall_after_s`` until it is a setting (``LIVESTREAM_STALL_AFTER_S``)."""


def stall_after(settings: Any) -> float:
    """``settings.stall_after_s`` if the settings have it, else :data:`DEFAULT_STALL_AFTER_S`."""
    return float(getattr(settings, "stall_after_s", DEFAULT_STALL_AFTER_S))


def stalled_partitions(
    live: LiveSnapshot, now_s: float, stall_after_s: float = DEFAULT_STALL_AFTER_S
) -> dict[int, float]:
    """Owned partitions with records waiting and no progress for more than ``stall_after_s`` -> seconds since
    their last progress (``math.inf`` if no progress was ever recorded for the partition)."""
    stalled: dict[int, float] = {}
    for partition in sorted(live.owned_partitions):
        if live.lag.get(partition, 0) <= 0:
            continue
        since = live.progress_at_s.get(partition)
        age = math.inf if since is None else now_s - since
        if age > stall_after_s:
            stalled[partition] = age
    return stalled


def readiness(live: LiveSnapshot, now_s: float, stall_after_s: float = DEFAULT_STALL_AFTER_S) -> tuple[bool, list[str]]:
    """``(ok, reasons)``: not ok while partitions are not assigned and recovered (``live.ready`` false), once the
    processing loop died (``live.fold_failure``), or while any owned partition is stalled; one reason each."""
    reasons: list[str] = []
    if live.fold_failure is not None:
        reasons.append(f"processing loop failed: {live.fold_failure}")
    if not live.ready:
        reasons.append("partitions not assigned or state not recovered yet")
    for partition, age in stalled_partitions(live, now_s, stall_after_s).items():
        since = "no progress recorded" if math.isinf(age) else f"no progress for {age:.0f}s"
        reasons.append(f"partition {partition} stalled: {live.lag.get(partition, 0)} records waiting, {since}")
    return not reasons, reasons


def liveness(live: LiveSnapshot) -> tuple[bool, list[str]]:
    """``(ok, reasons)``: alive unless the processing loop died (the process exits soon after)."""
    if live.fold_failure is not None:
        return False, [f"processing loop failed: {live.fold_failure}"]
    return True, []


__all__ = ["DEFAULT_STALL_AFTER_S", "liveness", "readiness", "stall_after", "stalled_partitions"]
