"""The worker's live view of the livestreams it owns, shared by the Redis mirror, the metrics collector and the API.

The processing agent updates it once per batch; readers take what is there at the time (Redis on its flush
interval, Prometheus at scrape time), so the per-event path pays nothing for serving. On a rebalance the channels
of revoked partitions are dropped: their new owner serves them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from schemas.alerts import AlertRecord
from stream.alerts import RULES
from stream.state import COUNTER_FIELDS, ChannelState, Counters


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A final 1-minute window of a livestream, ``[start_ms, start_ms + size_ms)``."""

    channel_id: str
    campaign: str
    start_ms: int
    size_ms: int
    counters: Counters


@dataclass
class LiveSnapshot:
    channels: dict[str, ChannelState] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    """Channels changed since the last Redis flush."""
    pending_viewers: dict[str, list[str]] = field(default_factory=dict)
    """Viewer ids not yet added to the channel's HyperLogLog (PFADD is idempotent, so a retry is harmless)."""
    pending_closed: list[ClosedWindow] = field(default_factory=list)
    """Final windows not yet written to Redis."""
    unique_viewers: dict[str, int] = field(default_factory=dict)
    """Latest HyperLogLog estimate per channel id and per ``campaign:<name>``, refreshed by the Redis mirror."""

    open_bounds: dict[int, dict[str, int]] = field(default_factory=dict)
    """Per events partition: ``closed_through_ms`` of each owned livestream that has an open window (campaign
    progress, :func:`stream.campaign.settled_through`)."""
    campaign_alerts: dict[str, dict[str, AlertRecord]] = field(default_factory=dict)
    """Active campaign alerts by campaign and rule (owned by the worker running the campaign aggregator)."""
    campaign_alerts_dirty: bool = False
    pending_campaign: list[tuple[str, int, Counters, int]] = field(default_factory=list)
    """Final campaign windows (campaign, start, counters, livestreams) not yet written to Redis."""
    alerts_fired: Counter[str] = field(default_factory=Counter)
    """Firing alert records published by this worker, by rule."""
    alerts_resolved: Counter[str] = field(default_factory=Counter)

    ready: bool = False
    """True once this worker owns partitions, recovered its tables and loaded their states."""
    resync_pending: bool = False
    """Set on partition assignment: reload owned states from the table once recovery completes."""

    # Pipeline counters (monotonic for the life of the process).
    records_processed: int = 0
    events_processed: int = 0
    redelivered_records: int = 0
    late_events: int = 0
    duplicate_events: int = 0
    duplicate_windows_suppressed: int = 0
    windows_closed: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    offset_gaps: int = 0
    lag: dict[int, int] = field(default_factory=dict)
    """Records of each owned events partition not yet processed (high watermark - next offset), per batch."""
    redis_errors: int = 0
    redis_flushes: int = 0

    def update(self, state: ChannelState) -> None:
        self.channels[state.channel_id] = state
        self.dirty.add(state.channel_id)
        bounds = self.open_bounds.setdefault(state.partition, {})
        if state.windows:
            bounds[state.channel_id] = state.closed_through_ms
        else:
            bounds.pop(state.channel_id, None)

    def alerts_firing(self) -> dict[str, int]:
        """Active alerts by rule: of the livestreams this worker owns, and of the campaigns it aggregates."""
        firing: dict[str, int] = dict.fromkeys(RULES, 0)
        for state in self.channels.values():
            for rule in state.alerts:
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

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget channels of partitions this worker no longer owns."""
        for partition in partitions:
            self.lag.pop(partition, None)
            self.open_bounds.pop(partition, None)
        for channel_id in [c for c, s in self.channels.items() if s.partition in partitions]:
            del self.channels[channel_id]
            self.dirty.discard(channel_id)
            self.pending_viewers.pop(channel_id, None)

    def totals(self) -> Counters:
        """Sum of the stream-to-date counters of every channel this worker owns."""
        total = Counters()
        for state in self.channels.values():
            total.merge(state.totals)
        return total

    def concurrent_viewers(self) -> int:
        return sum(max(0, s.concurrent) for s in self.channels.values())

    def top_channels(self, k: int) -> tuple[list[ChannelState], list[ChannelState]]:
        """The ``k`` channels with the highest GMV (ties by id) and the rest."""
        ranked = sorted(self.channels.values(), key=lambda s: (-s.totals.gmv_vnd, s.channel_id))
        return ranked[:k], ranked[k:]


__all__ = ["COUNTER_FIELDS", "ClosedWindow", "LiveSnapshot"]
