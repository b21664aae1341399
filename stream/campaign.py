"""Campaign windows: the 1-minute windows of every livestream of a campaign, summed, emitted once they are final.

Livestreams of one campaign live on different partitions, each with its own event-time progress, so a campaign
window can only be emitted when *every* partition has finished it. The owners of the events partitions send, on one
ordered internal topic (``<namespace>.campaign-input``, one partition):

- a :class:`ChannelWindowCopy` of every final 1-minute livestream window, then
- a :class:`PartitionProgress` per partition: the newest window start ``S`` such that every livestream of the
  partition has closed everything up to ``S`` and no on-time event can still create a window at or before ``S``
  (:func:`settled_through`).

A campaign window ``[start, start + size)`` is emitted when progress from every partition is at or past ``start``;
it is the sum of the copies received for it.

Idle partitions. A partition with no record for the idle timeout reports, at each idle tick, only the bound of its
open windows (``idle``, as of the tick's wall-clock time ``as_of_wall_ms``). Such a claim is trusted for window
``S`` only if it was made after the newest record that brought any active partition to ``S`` was produced
(``as_of_wall_ms`` of that partition's report): the ticks of a partition are processed after every record produced
before them, so the idle partition had then read everything produced alongside the data of ``S``. A fresh worker
that sat idle before a burst therefore emits exactly what it emits without the pause.

A copy for a minute that was already emitted (a livestream whose events lag its partition by more than a window
and grace) is a *correction*: it is added to the minute, which is emitted again with ``revision`` + 1 and the GMV
to date moved by its GMV, if the minute is among the last ``CORRECTION_HORIZON`` emitted minutes of its campaign;
older, or a copy sent again after a crash (its livestream is already in the minute), it changes nothing and is
counted in ``ignored_windows`` (an older one also in ``dropped_windows``, which the aggregator logs).

The state carries the input offset it reflects and is saved after the outputs are acknowledged, so a restart
neither loses nor double counts a copy; windows re-emitted after a crash are filtered by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from stream.alerts import ActiveAlert, AlertChange, AlertRules, transition
from stream.state import Counters

SETTLED_ALL: Final = 1 << 62
"""Progress of a partition with no open window: it holds no campaign window back."""


class ChannelWindowCopy(msgspec.Struct, frozen=True, tag="window", tag_field="kind"):
    channel_id: str
    campaign: str
    start_ms: int
    counters: Counters


class PartitionProgress(msgspec.Struct, frozen=True, tag="progress", tag_field="kind"):
    """How far a partition has settled. ``as_of_wall_ms``: Kafka timestamp of the newest record it had processed
    (active), or of the idle tick (``idle``: no record for the idle timeout; only open windows are bounded)."""

    partition: int
    settled_through_ms: int
    idle: bool = False
    as_of_wall_ms: int = -1


CampaignInput = ChannelWindowCopy | PartitionProgress


class PendingWindow(msgspec.Struct):
    counters: Counters = msgspec.field(default_factory=Counters)
    channels: list[str] = msgspec.field(default_factory=list)


CORRECTION_HORIZON: Final = 120
"""Emitted minutes per campaign kept for corrections (two hours of a fair)."""


class EmittedWindow(msgspec.Struct):
    counters: Counters
    channels: list[str]
    revision: int = 0


class CampaignState(msgspec.Struct):
    """Everything the campaign aggregator knows (one value: the input topic has one partition)."""

    last_offset: int = -1
    progress: dict[int, int] = msgspec.field(default_factory=dict)
    """Settled-through window start per events partition, as last reported."""
    idle_as_of: dict[int, int] = msgspec.field(default_factory=dict)
    """Per partition whose last report was idle: the wall-clock time of that report."""
    reached: dict[int, list[tuple[int, int]]] = msgspec.field(default_factory=dict)
    """Per partition: (settled-through, as-of wall time) of its active reports, oldest first (bounded)."""
    pending: dict[str, dict[int, PendingWindow]] = msgspec.field(default_factory=dict)
    emitted_through: dict[str, int] = msgspec.field(default_factory=dict)
    """Newest emitted window start per campaign."""
    emitted: dict[str, dict[int, EmittedWindow]] = msgspec.field(default_factory=dict)
    """The last ``CORRECTION_HORIZON`` emitted minutes per campaign, for corrections."""
    gmv_to_date: dict[str, int] = msgspec.field(default_factory=dict)
    alerts: dict[str, dict[str, ActiveAlert]] = msgspec.field(default_factory=dict)
    """Active campaign alerts per campaign, by rule."""
    ignored_windows: int = 0
    dropped_windows: int = 0
    """Copies for a minute older than every kept emitted minute of their campaign: counted, never applied (also in
    ``ignored_windows``); the aggregator logs each increase."""
    corrections: int = 0
    """Corrected campaign minutes emitted (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class CampaignWindow:
    """A final campaign window ``[start_ms, start_ms + size_ms)``."""

    campaign: str
    start_ms: int
    size_ms: int
    counters: Counters
    livestreams: int
    gmv_to_date_vnd: int
    revision: int = 0


@dataclass
class CampaignOutput:
    windows: list[CampaignWindow]
    alerts: list[AlertChange]


def apply_input(
    state: CampaignState,
    record: CampaignInput,
    offset: int,
    partitions: int,
    size_ms: int,
    rules: AlertRules,
) -> CampaignOutput | Literal[False]:
    """Fold one input record at ``offset``; False if it was applied before. Returns the windows now final."""
    if offset <= state.last_offset:
        return False
    state.last_offset = offset
    if isinstance(record, ChannelWindowCopy):
        campaign = record.campaign
        if record.start_ms <= state.emitted_through.get(campaign, -1):
            return CampaignOutput(_correct(state, record, size_ms), [])
        window = state.pending.setdefault(campaign, {}).setdefault(record.start_ms, PendingWindow())
        if record.channel_id in window.channels:
            state.ignored_windows += 1
        else:
            window.channels.append(record.channel_id)
            window.counters.merge(record.counters)
        return CampaignOutput([], [])
    # The newest report counts, even if lower (a restarted owner, or an idle partition that got records again):
    # it can only hold back windows not emitted yet.
    partition = record.partition
    state.progress[partition] = record.settled_through_ms
    if record.idle:
        state.idle_as_of[partition] = record.as_of_wall_ms
    else:
        state.idle_as_of.pop(partition, None)
        history = state.reached.setdefault(partition, [])
        if not history or record.settled_through_ms > history[-1][0]:
            history.append((record.settled_through_ms, record.as_of_wall_ms))
            del history[:-REACHED_HISTORY]
    return release(state, partitions, size_ms, rules)


REACHED_HISTORY: Final = 512
"""Active reports kept per partition (a fair has a few hundred minutes; older ones only make the check stricter)."""


def _first_reached(history: list[tuple[int, int]], start: int) -> int:
    """Wall time of the first kept active report settled at or past ``start`` (-1 if none)."""
    for settled, as_of in history:
        if settled >= start:
            return as_of
    return -1


def _settled(state: CampaignState, partitions: int, start: int) -> bool:
    """Whether every partition is done with window ``start`` (see the module docstring for idle partitions)."""
    progress, idle_as_of, reached = state.progress, state.idle_as_of, state.reached
    if any(progress.get(p, -1) < start for p in range(partitions)):
        return False
    idle = [p for p in range(partitions) if p in idle_as_of and _first_reached(reached.get(p, []), start) < 0]
    if not idle:
        return True
    data_as_of = max(_first_reached(history, start) for history in reached.values()) if reached else -1
    return all(idle_as_of[p] >= data_as_of for p in idle)


def release(state: CampaignState, partitions: int, size_ms: int, rules: AlertRules) -> CampaignOutput:
    """Emit every pending window that all ``partitions`` have settled, oldest first, with milestone alerts."""
    out = CampaignOutput([], [])
    if len(state.progress) < partitions:
        return out
    through = min(state.progress.values())
    candidates = sorted({s for pending in state.pending.values() for s in pending if s <= through})
    settled = -1
    for start in candidates:
        if not _settled(state, partitions, start):
            break
        settled = start
    milestones = sorted(rules.gmv_milestone.amounts_vnd)
    for campaign in sorted(state.pending):
        pending = state.pending[campaign]
        for start in sorted(s for s in pending if s <= settled):
            window = pending.pop(start)
            before = state.gmv_to_date.get(campaign, 0)
            after = before + window.counters.gmv_vnd
            state.gmv_to_date[campaign] = after
            state.emitted_through[campaign] = start
            kept = state.emitted.setdefault(campaign, {})
            kept[start] = EmittedWindow(window.counters, window.channels)
            for old in sorted(kept)[:-CORRECTION_HORIZON]:
                del kept[old]
            emitted = msgspec.structs.replace(window.counters)  # a correction changes the kept counters in place
            out.windows.append(CampaignWindow(campaign, start, size_ms, emitted, len(window.channels), after))
            if rules.gmv_milestone.enabled:
                out.alerts.extend(_milestones(state, campaign, start, size_ms, before, after, milestones, rules))
        if not pending:
            del state.pending[campaign]
    return out


def _correct(state: CampaignState, copy: ChannelWindowCopy, size_ms: int) -> list[CampaignWindow]:
    """A copy for an emitted minute: the corrected minute (revision + 1), or nothing (a repeat, or too old)."""
    kept = state.emitted.get(copy.campaign, {})
    window = kept.get(copy.start_ms)
    if window is None and kept and copy.start_ms > min(kept):
        # A minute that had no livestream window when the minutes around it were emitted: emitted now.
        window = kept[copy.start_ms] = EmittedWindow(Counters(), [], revision=-1)
    if window is None or copy.channel_id in window.channels:
        state.ignored_windows += 1
        if window is None:
            state.dropped_windows += 1
        return []
    window.channels.append(copy.channel_id)
    window.counters.merge(copy.counters)
    window.revision += 1
    after = state.gmv_to_date.get(copy.campaign, 0) + copy.counters.gmv_vnd
    state.gmv_to_date[copy.campaign] = after
    state.corrections += 1
    return [
        CampaignWindow(
            copy.campaign,
            copy.start_ms,
            size_ms,
            msgspec.structs.replace(window.counters),  # each revision keeps its own counters
            len(window.channels),
            after,
            window.revision,
        )
    ]


def _milestones(
    state: CampaignState,
    campaign: str,
    start: int,
    size_ms: int,
    before: int,
    after: int,
    milestones: list[int],
    rules: AlertRules,
) -> list[AlertChange]:
    """Resolve the previous window's milestone, then fire if this window crossed one (the highest crossed)."""
    active = state.alerts.setdefault(campaign, {})
    changes: list[AlertChange] = []

    def decide(holds: bool, threshold: float, summary: str) -> None:
        change = transition(
            active,
            "gmv_milestone",
            holds,
            channel_id="",
            campaign=campaign,
            window_start_ms=start,
            at_ms=start + size_ms,
            value=float(after),
            threshold=threshold,
            summary=summary,
            severity=rules.gmv_milestone.severity,
        )
        if change is not None:
            changes.append(change)

    if "gmv_milestone" in active:
        decide(False, active["gmv_milestone"].threshold, f"campaign GMV {after:,} VND")
    crossed = [amount for amount in milestones if before < amount <= after]
    if crossed:
        decide(True, float(crossed[-1]), f"campaign GMV passed {crossed[-1]:,} VND ({after:,} VND)")
    if not active:
        del state.alerts[campaign]
    return changes


def settled_through(open_bounds: dict[str, int], watermark_ms: int, size_ms: int, grace_ms: int, idle: bool) -> int:
    """A partition's progress: the newest window start every livestream of the partition is done with.

    ``open_bounds`` is the ``closed_through_ms`` of each livestream with an open window; ``watermark_ms`` the
    partition's event-time watermark (newest event time applied minus allowed lateness, -1 before any): a
    livestream without an open window may still send events that are on time at that watermark. An ``idle``
    partition (no record for the idle timeout of wall-clock time) holds back nothing but its open windows.
    """
    bound = min(open_bounds.values(), default=SETTLED_ALL)
    if idle:
        return bound
    horizon = watermark_ms - size_ms - grace_ms
    if watermark_ms < 0 or horizon < 0:
        return min(bound, -1)
    return min(bound, horizon - horizon % size_ms)


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(CampaignState)
_input_decoder: Final = msgspec.msgpack.Decoder(CampaignInput)


def encode(value: CampaignState | CampaignInput) -> bytes:
    return _encoder.encode(value)


def decode_state(data: bytes) -> CampaignState:
    return _decoder.decode(data)


def decode_input(data: bytes) -> CampaignInput:
    decoded: CampaignInput = _input_decoder.decode(data)
    return decoded
