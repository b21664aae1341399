"""Output model of ``<namespace>.alerts``, schema version 1.

Key ``alert_id`` = ``rule|subject|window_start_ms`` (subject: the livestream, or the campaign for campaign rules).
Each alert episode produces exactly one ``firing`` record and, later, one ``resolved`` record with the same key, in
that order, also across worker restarts. The topic is not compacted (both records are kept). Rules and their
thresholds: :mod:`stream.alerts` (which also builds these records: :func:`stream.alerts.alert_record`).
"""

from __future__ import annotations

from typing import Literal

import msgspec


class AlertRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One alert transition."""

    v: Literal[1] = 1
    alert_id: str
    rule: Literal["stream_down", "viewer_drop", "order_surge", "payment_trouble", "comment_spam", "gmv_milestone"]
    status: Literal["firing", "resolved"]
    severity: Literal["page", "ticket", "info"]
    channel_id: str
    """The livestream; empty for campaign alerts."""
    campaign: str
    window_start_ms: int
    """Start of the window in which the condition first held (stable for the whole episode)."""
    at_ms: int
    """Event time of the transition (a window end, or the event-time clock that showed the silence)."""
    value: float
    """The measured value that decided the transition (the rule's unit: %, ratio, count, seconds, VND)."""
    threshold: float
    summary: str
    emitted_at_ms: int
    """Wall-clock time the record was produced."""
