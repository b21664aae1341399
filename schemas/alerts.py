"""Output model of ``<namespace>.alerts``, schema version 1.

Key ``alert_id`` = ``rule|subject|window_start_ms`` (subject: the livestream, or the campaign for campaign rules).
Each alert episode produces exactly one ``firing`` record and, later, one ``resolved`` record with the same key, in
that order, also across worker restarts. The topic is not compacted (both records are kept). Rules and their
thresholds: :mod:`stream.alerts`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from stream.alerts import ActiveAlert, AlertChange


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

    @classmethod
    def from_change(cls, change: AlertChange, emitted_at_ms: int) -> AlertRecord:
        return cls(
            alert_id=change.alert_id,
            rule=change.rule,
            status=change.status,
            severity=change.severity,
            channel_id=change.channel_id,
            campaign=change.campaign,
            window_start_ms=change.window_start_ms,
            at_ms=change.at_ms,
            value=change.value,
            threshold=change.threshold,
            summary=change.summary,
            emitted_at_ms=emitted_at_ms,
        )

    @classmethod
    def from_active(
        cls, rule: str, alert: ActiveAlert, *, channel_id: str, campaign: str, emitted_at_ms: int
    ) -> AlertRecord:
        """The firing record of an alert that is still active (for the serving layer)."""
        from stream.alerts import alert_id

        return cls(
            alert_id=alert_id(rule, channel_id or campaign, alert.window_start_ms),
            rule=rule,  # type: ignore[arg-type]
            status="firing",
            severity=alert.severity,
            channel_id=channel_id,
            campaign=campaign,
            window_start_ms=alert.window_start_ms,
            at_ms=alert.fired_at_ms,
            value=alert.value,
            threshold=alert.threshold,
            summary=alert.summary,
            emitted_at_ms=emitted_at_ms,
        )
