"""The worker's live view of the livestreams it owns, shared by the Redis mirror, the metrics collector and the API.

The processing agent updates it once per batch; readers take what is there at the time (Redis on its flush
interval, Prometheus at scrape time), so the per-event path pays nothing for serving. On a rebalance the channels
of revoked partitions are dropped: their new owner serves them.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from schemas.alerts import AlertRecord
from schemas.stats import WindowStats
from stream.alerts import RULES, ActiveAlert
from stream.state import COUNTER_FIELDS, ChannelState, Counters

MAX_PENDING_TRANSITIONS = 10_000
"""Alert transitions kept for the alert history while Redis cannot be written."""


class ChannelView(msgspec.Struct, gc=False):
    """What the serving side needs of a livestream (a few hundred bytes; the full state carries kilobytes of
    fold memory: dedup buckets, comment tallies, rule history)."""

    channel_id: str
    campaign: str
    creators: list[str]
    totals: Counters
    concurrent: int
    peak_concurrent: int
    first_ts_ms: int
    last_ts_ms: int
    max_ts_ms: int
    late_events: int
    ended_ms: int
    partition: int
    last_wall_ms: int
    open_windows: int
    alerts: dict[str, ActiveAlert] | None
    source: int = -1
    last_offset: int = -1
    """Offset of the last record applied, in :attr:`partition` (orders two views of a livestream: see
    :mod:`agents.redis_mirror`)."""

    @classmethod
    def of(cls, state: ChannelState) -> ChannelView:
        return cls(
            state.channel_id,
            sys.intern(state.campaign),
            state.creators,
            state.totals,
            state.concurrent,
            state.peak_concurrent,
            state.first_ts_ms,
            state.last_ts_ms,
            state.max_ts_ms,
            state.late_events,
            state.ended_ms,
            state.partition,
            state.last_wall_ms,
            len(state.windows),
            state.alerts or None,
            state.source if state.source >= 0 else state.partition,
            state.last_offset,
        )


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A final 1-minute window of a livestream, ``[start_ms, start_ms + size_ms)``."""

    channel_id: str
    campaign: str
    start_ms: int
    size_ms: int
    counters: Counters

    def stats(self, emitted_at_ms: int) -> WindowStats:
        """The final window record of the stats topics."""
        fields: dict[str, object] = {
            **self.counters.as_dict(),
            "channel_id": self.channel_id,
            "campaign": self.campaign,
            "window_start_ms": self.start_ms,
            "window_end_ms": self.start_ms + self.size_ms,
            "emitted_at_ms": emitted_at_ms,
        }
        return msgspec.convert(fields, WindowStats)


@dataclass
class LiveSnapshot:
    channels: dict[str, ChannelView] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    """Channels changed since the last Redis flush."""
    pending_viewers: dict[str, list[str]] = field(default_factory=dict)
    """Viewer ids not yet added to the channel's HyperLogLog (PFADD is idempotent, so a retry is harmless)."""
    pending_closed: list[ClosedWindow] = field(default_factory=list)
    """Final windows not yet written to Redis."""
    pending_windows: dict[str, dict[int, Counters]] = field(default_factory=dict)
    """Open windows of dirty channels, as of their latest state, until the mirror has written them."""
    unique_viewers: dict[str, int] = field(default_factory=dict)
    """Latest HyperLogLog estimate per livestream id, refreshed by the Redis mirror."""
    campaign_unique_viewers: dict[str, int] = field(default_factory=dict)
    """Latest HyperLogLog estimate per campaign, refreshed by the Redis mirror (apart from livestream ids, which
    can be any string)."""

    campaign_alerts: dict[str, dict[str, AlertRecord]] = field(default_factory=dict)
    """Active campaign alerts by campaign and rule (owned by the worker running the campaign aggregator)."""
    campaign_alerts_dirty: bool = False
    alert_transitions: list[AlertRecord] = field(default_factory=list)
    """Every alert transition (livestream and campaign, firing and resolved) published here and not yet written to
    the alert history, in order: an alert that fired and resolved between two Redis writes is in the history too.
    Bounded by :data:`MAX_PENDING_TRANSITIONS` (the oldest are dropped while Redis is away that long)."""
    resolved_at: dict[str, int] = field(default_factory=dict)
    """Event time (``at_ms``) of each livestream alert resolution not yet written to the alert history, by alert
    id; the Redis mirror takes them."""
    pending_campaign: list[tuple[str, int, Counters, int]] = field(default_factory=list)
    """Final campaign windows (campaign, start, counters, livestreams) not yet written to Redis."""
    alerts_fired: Counter[str] = field(default_factory=Counter)
    """Firing alert records published by this worker, by rule."""
    campaign_windows_ignored: int = 0
    campaign_corrections: int = 0
    """Campaign minutes emitted again with a late livestream window added (a higher ``revision``)."""
    """Livestream window copies the campaign aggregator ignored (repeats, or too late for their campaign minute)."""

    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set after each batch that changed the snapshot (wakes the Redis mirror)."""

    ready: bool = False
    """True once this worker owns partitions, recovered its tables and loaded their states."""
    resync_pending: bool = False
    """Set on partition assignment: reload owned states from the table once recovery completes."""

    # Pipeline counters (monotonic for the life of the process).
    records_processed: int = 0
    events_processed: int = 0
    redis_rebuilds: int = 0
    """Times the Redis mirror found Redis had lost its keys and wrote everything again."""
    redis_evicting: bool = False
    """Redis may evict keys (its ``maxmemory-policy`` is not ``noeviction``, as last seen by the mirror)."""
    counted: Counters = field(default_factory=Counters)
    """What this process added to stream-to-date counters (:attr:`stream.fold.BatchCounters.applied`): it only
    grows, whatever partitions come and go (``/metrics`` serves it as the ``_total`` counters)."""
    redelivered_records: int = 0
    late_events: int = 0
    duplicate_events: int = 0
    duplicate_order_updates: int = 0
    duplicate_windows_suppressed: int = 0
    windows_closed: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    offset_gaps: int = 0
    misrouted_records: int = 0
    """Records found on a partition other than their key's, forwarded to the right one."""
    lag: dict[int, int] = field(default_factory=dict)
    """Records of each owned events partition not yet processed (high watermark - next offset), per batch."""
    owned_partitions: set[int] = field(default_factory=set)
    """Events partitions assigned to this worker in the current consumer-group generation."""
    progress_at_s: dict[int, float] = field(default_factory=dict)
    """Per owned events partition: wall-clock time (epoch s) it last made progress, i.e. processed a record or
    was seen caught up (no lag). Set on assignment; a partition with lag whose value is old is stalled."""
    fold_failure: str | None = None
    """Set when the processing loop died (the worker is then not ready and exits)."""
    redis_errors: int = 0
    redis_flushes: int = 0

    def update(self, state: ChannelState) -> None:
        self.channels[state.channel_id] = ChannelView.of(state)
        self.dirty.add(state.channel_id)
        if state.windows:
            self.pending_windows[state.channel_id] = state.windows
        else:
            self.pending_windows.pop(state.channel_id, None)

    def alerts_firing(self) -> dict[str, int]:
        """Active alerts by rule: of the livestreams this worker owns, and of the campaigns it aggregates."""
        firing: dict[str, int] = dict.fromkeys(RULES, 0)
        for state in self.channels.values():
            for rule in state.alerts or ():
                firing[rule] = firing.get(rule, 0) + 1
        for active in self.campaign_alerts.values():
            for rule in active:
                firing[rule] = firing.get(rule, 0) + 1
        return firing

    def add_viewers(self, viewers: dict[str, list[str]]) -> None:
        for channel_id, ids in viewers.items():
            self.pending_viewers.setdefault(channel_id, []).extend(ids)

    def take_dirty(self) -> tuple[set[str], dict[str, list[str]], list[ClosedWindow]]:
        """Hand the pending Redis work to the mirror; give it back with :meth:`restore` if the write fails."""
        dirty, viewers, closed = self.dirty, self.pending_viewers, self.pending_closed
        self.dirty, self.pending_viewers, self.pending_closed = set(), {}, []
        return dirty, viewers, closed

    def restore(self, dirty: set[str], viewers: dict[str, list[str]], closed: list[ClosedWindow]) -> None:
        self.dirty |= dirty
        for channel_id, ids in viewers.items():
            self.pending_viewers.setdefault(channel_id, []).extend(ids)
        self.pending_closed = closed + self.pending_closed

    def add_transitions(self, records: list[AlertRecord]) -> None:
        """Queue alert transitions for the history (see :attr:`alert_transitions`)."""
        self.alert_transitions.extend(records)
        excess = len(self.alert_transitions) - MAX_PENDING_TRANSITIONS
        if excess > 0:
            del self.alert_transitions[:excess]

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget channels of partitions this worker no longer owns."""
        for partition in partitions:
            self.lag.pop(partition, None)
            self.progress_at_s.pop(partition, None)
            self.owned_partitions.discard(partition)
        for channel_id in [c for c, s in self.channels.items() if s.partition in partitions]:
            del self.channels[channel_id]
            self.dirty.discard(channel_id)
            self.pending_windows.pop(channel_id, None)
            self.pending_viewers.pop(channel_id, None)

    def totals(self) -> Counters:
        """Sum of the stream-to-date counters of every channel this worker owns."""
        total = Counters()
        for state in self.channels.values():
            total.merge(state.totals)
        return total

    def concurrent_viewers(self) -> int:
        return sum(max(0, s.concurrent) for s in self.channels.values())

    def top_channels(self, k: int) -> tuple[list[ChannelView], list[ChannelView]]:
        """The ``k`` channels with the highest GMV (ties by id) and the rest."""
        ranked = sorted(self.channels.values(), key=lambda s: (-s.totals.gmv_vnd, s.channel_id))
        return ranked[:k], ranked[k:]


__all__ = ["COUNTER_FIELDS", "ChannelView", "ClosedWindow", "LiveSnapshot"]
