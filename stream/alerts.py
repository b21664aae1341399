"""Alert rules for fair operators, evaluated in the pure core on event time.

Rules (thresholds in :class:`AlertRules`, loaded from a TOML file; the shipped defaults are in
``deploy/alerts.toml``):

- ``stream_down``: a livestream that has not ended (no ``live_end``) and still has viewers sends no event for
  ``silence_s`` of event time, measured against the newest event of the other livestreams on its partition, or, when
  the partition is quiet, against the wall clock at an idle tick, less ``skew_s`` (how far behind the others a
  livestream's events may legitimately arrive). Resolved by its next event or its ``live_end``.
- ``viewer_drop``: concurrent viewers at the end of a closed 1-minute window are ``drop_pct`` % or more below the
  peak of the ``lookback_min`` windows before it (a peak of at least ``min_peak``). Resolved at the first closed
  window where that no longer holds (at the latest once the peak leaves the lookback).
- ``order_surge``: paid orders in a closed 1-minute window are at least ``min_orders`` and more than ``factor``
  times the livestream's average per minute over the ``trailing_min`` minutes before it (at least
  ``min_history_min`` minutes of history). Resolved at the first closed window below that.
- ``payment_trouble``: in a closed 5-minute window, cancelled + refunded orders are more than ``max_share`` of
  placed orders (at least ``min_placed`` placed). Resolved at the first 5-minute window at or below it.
- ``comment_spam``: in a closed 1-minute window one user posts ``per_user`` or more comments, or one text
  (case and spacing folded) is posted ``same_text`` or more times. Resolved at the first clean window.
- ``gmv_milestone``: a campaign's GMV over its final campaign windows crosses one of ``amounts_vnd``; resolved
  when the next campaign window is emitted (a milestone is news, not a condition).

Each episode has one key ``rule|subject|window_start_ms`` (subject = livestream, or campaign for milestones;
window = the window in which the condition first held) and produces exactly one ``firing`` and one ``resolved``
record. The active alerts are part of the livestream's persisted state, so a restart neither repeats nor loses them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import msgspec

from schemas.alerts import AlertRecord

if TYPE_CHECKING:
    from stream.state import ChannelState, FinalWindow, Gap

RuleName = Literal["stream_down", "viewer_drop", "order_surge", "payment_trouble", "comment_spam", "gmv_milestone"]
RULES: Final[tuple[RuleName, ...]] = (
    "stream_down",
    "viewer_drop",
    "order_surge",
    "payment_trouble",
    "comment_spam",
    "gmv_milestone",
)
Severity = Literal["page", "ticket", "info"]


class StreamDownRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    silence_s: int = 60
    skew_s: int = 70
    """How far behind the other livestreams of its partition a livestream's events may arrive (e.g. producers
    that send one batch per livestream and minute) before its silence counts."""
    min_viewers: int = 20
    severity: Severity = "page"


class ViewerDropRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    drop_pct: float = 40.0
    lookback_min: int = 5
    min_peak: int = 200
    severity: Severity = "ticket"


class OrderSurgeRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    factor: float = 4.0
    trailing_min: int = 10
    min_history_min: int = 5
    min_orders: int = 15
    severity: Severity = "info"


class PaymentTroubleRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    max_share: float = 0.35
    min_placed: int = 20
    severity: Severity = "page"


class CommentSpamRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    per_user: int = 12
    same_text: int = 60
    severity: Severity = "ticket"


class GmvMilestoneRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    amounts_vnd: list[int] = msgspec.field(
        default_factory=lambda: [100_000_000, 250_000_000, 500_000_000, 1_000_000_000]
    )
    severity: Severity = "info"


class AlertRules(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every rule's thresholds; a table missing from the file keeps its defaults."""

    stream_down: StreamDownRule = msgspec.field(default_factory=StreamDownRule)
    viewer_drop: ViewerDropRule = msgspec.field(default_factory=ViewerDropRule)
    order_surge: OrderSurgeRule = msgspec.field(default_factory=OrderSurgeRule)
    payment_trouble: PaymentTroubleRule = msgspec.field(default_factory=PaymentTroubleRule)
    comment_spam: CommentSpamRule = msgspec.field(default_factory=CommentSpamRule)
    gmv_milestone: GmvMilestoneRule = msgspec.field(default_factory=GmvMilestoneRule)


def load_rules(path: Path | None) -> AlertRules:
    """Rules from a TOML file (``None``: the defaults). Unknown keys or wrong types raise ``ValueError``."""
    if path is None:
        return AlertRules()
    try:
        return msgspec.convert(tomllib.loads(path.read_text()), AlertRules)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"alert rules {path}: {exc}") from exc


class ActiveAlert(msgspec.Struct, frozen=True):
    """An alert that fired and has not resolved yet (persisted in the subject's state)."""

    window_start_ms: int
    fired_at_ms: int
    value: float
    threshold: float
    summary: str
    severity: Severity


@dataclass(frozen=True, slots=True)
class AlertChange:
    """A firing or resolved transition, to be published on the alerts topic."""

    rule: RuleName
    status: Literal["firing", "resolved"]
    channel_id: str
    campaign: str
    window_start_ms: int
    at_ms: int
    value: float
    threshold: float
    summary: str
    severity: Severity

    @property
    def alert_id(self) -> str:
        return alert_id(self.rule, self.channel_id or self.campaign, self.window_start_ms)


def alert_id(rule: str, subject: str, window_start_ms: int) -> str:
    return f"{rule}|{subject}|{window_start_ms}"


def transition(
    active: dict[str, ActiveAlert],
    rule: RuleName,
    holds: bool,
    *,
    channel_id: str,
    campaign: str,
    window_start_ms: int,
    at_ms: int,
    value: float,
    threshold: float,
    summary: str,
    severity: Severity,
) -> AlertChange | None:
    """Fire when ``holds`` and ``rule`` is not active; resolve when it does not hold and is active; else nothing."""
    current = active.get(rule)
    if holds and current is None:
        active[rule] = ActiveAlert(window_start_ms, at_ms, value, threshold, summary, severity)
        return AlertChange(
            rule, "firing", channel_id, campaign, window_start_ms, at_ms, value, threshold, summary, severity
        )
    if not holds and current is not None:
        del active[rule]
        return AlertChange(
            rule,
            "resolved",
            channel_id,
            campaign,
            current.window_start_ms,
            at_ms,
            value,
            current.threshold,
            summary,
            current.severity,
        )
    return None


def fold_text(text: str) -> str:
    """The key under which comment texts count as "the same": case-folded, spacing collapsed, first 80 chars."""
    return " ".join(text.casefold().split())[:80]


def evaluate_closed_window(
    state: ChannelState, window: FinalWindow, rules: AlertRules, one_minute: bool
) -> list[AlertChange]:
    """Rules decided by one final window of ``state``'s livestream; call for every closed window, oldest first
    (``one_minute``: a tumbling window; else a hopping one).

    Updates the rule memory kept in the state (concurrent viewers and paid orders per recent window) whether or
    not a rule is enabled, so enabling one later needs no replay.
    """
    changes: list[AlertChange] = []
    start_ms, size_ms, counters = window.start_ms, window.size_ms, window.counters
    end_ms = start_ms + size_ms
    channel_id, campaign, active = state.channel_id, state.campaign, state.alerts

    def decide(rule: RuleName, holds: bool, value: float, threshold: float, summary: str, severity: Severity) -> None:
        change = transition(
            active,
            rule,
            holds,
            channel_id=channel_id,
            campaign=campaign,
            window_start_ms=start_ms,
            at_ms=end_ms,
            value=value,
            threshold=threshold,
            summary=summary,
            severity=severity,
        )
        if change is not None:
            changes.append(change)

    if not one_minute:
        rule_pt = rules.payment_trouble
        placed = counters.orders_placed
        troubled = counters.orders_cancelled + counters.orders_refunded
        share = troubled / placed if placed else 0.0
        if rule_pt.enabled:
            decide(
                "payment_trouble",
                placed >= rule_pt.min_placed and share > rule_pt.max_share,
                round(share, 4),
                rule_pt.max_share,
                f"{troubled} of {placed} orders cancelled or refunded in 5 minutes",
                rule_pt.severity,
            )
        return changes

    # Memory first: concurrent viewers at the window's end, paid orders, comment tallies.
    state.closed_concurrent += counters.views - counters.leaves
    viewers_now = state.closed_concurrent
    previous_viewers = dict(state.recent_concurrent)
    previous_paid = dict(state.recent_paid)
    state.recent_concurrent[start_ms] = viewers_now
    state.recent_paid[start_ms] = counters.orders_paid
    if state.first_window_ms < 0:
        state.first_window_ms = start_ms
    keep_from = start_ms - size_ms * max(rules.viewer_drop.lookback_min, rules.order_surge.trailing_min)
    for memory in (state.recent_concurrent, state.recent_paid):
        for old in [s for s in memory if s < keep_from]:
            del memory[old]
    by_user, by_text = window.comment_users, window.comment_texts

    rule_vd = rules.viewer_drop
    if rule_vd.enabled:
        lookback = [v for s, v in previous_viewers.items() if start_ms - rule_vd.lookback_min * size_ms <= s]
        peak = max(lookback, default=0)
        limit = peak * (1.0 - rule_vd.drop_pct / 100.0)
        drop = (peak - viewers_now) / peak * 100.0 if peak > 0 else 0.0
        decide(
            "viewer_drop",
            peak >= rule_vd.min_peak and viewers_now <= limit,
            round(drop, 2),
            rule_vd.drop_pct,
            f"concurrent viewers {viewers_now} vs recent peak {peak}",
            rule_vd.severity,
        )

    rule_os = rules.order_surge
    if rule_os.enabled:
        history_from = max(state.first_window_ms, start_ms - rule_os.trailing_min * size_ms)
        minutes = (start_ms - history_from) // size_ms
        trailing = sum(v for s, v in previous_paid.items() if s >= history_from)
        average = trailing / minutes if minutes else 0.0
        paid = counters.orders_paid
        ratio = paid / average if average > 0 else float(paid)
        decide(
            "order_surge",
            minutes >= rule_os.min_history_min and paid >= rule_os.min_orders and paid > rule_os.factor * average,
            round(ratio, 2),
            rule_os.factor,
            f"{paid} paid orders in a minute vs {average:.1f}/min over the previous {minutes} min",
            rule_os.severity,
        )

    rule_cs = rules.comment_spam
    if rule_cs.enabled:
        top_user, user_count = max(by_user.items(), key=lambda kv: (kv[1], kv[0]), default=("", 0))
        top_text, text_count = max(by_text.items(), key=lambda kv: (kv[1], kv[0]), default=("", 0))
        by_one_user = user_count >= rule_cs.per_user
        repeated = text_count >= rule_cs.same_text
        if by_one_user:
            summary = f"user {top_user} posted {user_count} comments in a minute"
        elif repeated:
            summary = f"{text_count} comments saying {top_text!r} in a minute"
        else:
            summary = f"most comments by one user {user_count}, most repeated text {text_count}"
        decide(
            "comment_spam",
            by_one_user or repeated,
            float(max(user_count, text_count)),
            float(rule_cs.per_user if by_one_user or not repeated else rule_cs.same_text),
            summary,
            rule_cs.severity,
        )
    return changes


def evaluate_silence(state: ChannelState, clock_ms: int, rules: AlertRules) -> AlertChange | None:
    """``stream_down`` for ``state`` at event time ``clock_ms`` (see the module docstring)."""
    rule = rules.stream_down
    if not rule.enabled or state.max_ts_ms < 0:
        return None
    silent_ms = clock_ms - state.max_ts_ms
    holds = (
        state.ended_ms < 0
        and state.concurrent >= rule.min_viewers
        and silent_ms - rule.skew_s * 1000 >= rule.silence_s * 1000
    )
    if holds == ("stream_down" in state.alerts):
        return None
    size_ms = 60_000
    return transition(
        state.alerts,
        "stream_down",
        holds,
        channel_id=state.channel_id,
        campaign=state.campaign,
        window_start_ms=state.max_ts_ms - state.max_ts_ms % size_ms,
        at_ms=clock_ms if holds else state.max_ts_ms,
        value=round(max(0, silent_ms) / 1000.0, 3),
        threshold=float(rule.silence_s),
        summary=(
            f"no events for {max(0, silent_ms) // 1000} s with {state.concurrent} viewers present"
            if holds
            else ("the livestream ended" if state.ended_ms >= 0 else "events again")
        ),
        severity=rule.severity,
    )


def stream_down_gap_ms(rules: AlertRules) -> int:
    """The silence (event time) after which a livestream counts as down: ``silence_s + skew_s``; 0 if disabled."""
    rule = rules.stream_down
    return (rule.silence_s + rule.skew_s) * 1000 if rule.enabled else 0


def evaluate_gap(state: ChannelState, gap: Gap, rules: AlertRules) -> list[AlertChange]:
    """``stream_down`` seen only afterwards: the livestream's own events show a silence long enough, but no clock
    showed it while it lasted (e.g. the worker was catching up and read the silence and its end in one batch).

    Gives the firing and the resolved record at once, with the key the live check would have used; nothing if that
    check already fired for it (then its resolve follows from :func:`resolve_if_active`).
    """
    rule = rules.stream_down
    gap_ms = stream_down_gap_ms(rules)
    if not gap_ms or gap.ended or gap.concurrent < rule.min_viewers or gap.to_ms - gap.from_ms < gap_ms:
        return []
    window = gap.from_ms - gap.from_ms % 60_000
    active = state.alerts.get("stream_down")
    if active is not None and active.window_start_ms == window:
        return []
    silent_s = round((gap.to_ms - gap.from_ms) / 1000.0, 3)
    common = {
        "rule": "stream_down",
        "channel_id": state.channel_id,
        "campaign": state.campaign,
        "window_start_ms": window,
        "value": silent_s,
        "threshold": float(rule.silence_s),
        "severity": rule.severity,
    }
    return [
        AlertChange(
            status="firing",
            at_ms=gap.from_ms + gap_ms,
            summary=f"no events for {int(silent_s)} s with {gap.concurrent} viewers present (seen afterwards)",
            **common,  # type: ignore[arg-type]
        ),
        AlertChange(status="resolved", at_ms=gap.to_ms, summary="events again", **common),  # type: ignore[arg-type]
    ]


def resolve_if_active(state: ChannelState, rules: AlertRules) -> AlertChange | None:
    """After new events were applied: a ``stream_down`` alert resolves (the stream is back, or it ended)."""
    if "stream_down" not in state.alerts:
        return None
    return evaluate_silence(state, state.max_ts_ms, rules)


def alert_record(change: AlertChange, emitted_at_ms: int) -> AlertRecord:
    """The ``<namespace>.alerts`` record of a transition."""
    return AlertRecord(
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


def active_alert_record(
    rule: str, alert: ActiveAlert, *, channel_id: str, campaign: str, emitted_at_ms: int
) -> AlertRecord:
    """The firing record of an alert that is still active (for the serving layer)."""
    return AlertRecord(
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
