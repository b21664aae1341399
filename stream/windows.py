"""Event-time window arithmetic.

Windows are half-open intervals ``[start, start + size)`` in epoch milliseconds, aligned to the epoch (UTC), so a
1-minute window starts on a whole minute. An event at ``ts`` belongs to the tumbling window whose start is
``ts - ts % size``. A window is *closed* once the watermark reaches ``end + grace``; events that arrive for a closed
window are late.
"""

from __future__ import annotations


def tumbling_start(ts_ms: int, size_ms: int) -> int:
    """Start of the tumbling window of ``size_ms`` that contains ``ts_ms``."""
    return ts_ms - ts_ms % size_ms


def hopping_starts(ts_ms: int, size_ms: int, step_ms: int) -> list[int]:
    """Starts of every hopping window (length ``size_ms``, advancing by ``step_ms``) that contains ``ts_ms``."""
    last = ts_ms - ts_ms % step_ms
    first = last - size_ms + step_ms
    return [start for start in range(first, last + 1, step_ms) if start <= ts_ms < start + size_ms]


def is_closed(window_start_ms: int, size_ms: int, grace_ms: int, watermark_ms: int) -> bool:
    """True when the window ``[start, start+size)`` no longer accepts events: ``watermark >= end + grace``."""
    return watermark_ms >= window_start_ms + size_ms + grace_ms
