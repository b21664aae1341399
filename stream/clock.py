"""Event-time clocks of events partitions, per source: what the partition-level checks (ended livestreams,
``stream_down``, campaign progress) judge by.

A clock is kept per :data:`SourceKey` ``(partition, source)``: the state partition a record is folded in and the
partition its producer appended it to (the same, unless it arrived as a forwarded copy). Records of one source
arrive in that source's order whatever else arrives between them, so a clock per source does not depend on how
the sources interleave. Each applied record contributes its livestream's newest event time, bounded by the
record's Kafka timestamp plus ``max_clock_lead_s`` (the caller bounds it). Per key:

- the *partition clock* is the newest contribution;
- the *silence clock* (``stream_down``) is the newest contribution of any livestream, unless it runs more than the
  lead ahead of the second newest livestream's, which is then used: one livestream's clock alone cannot page the
  others of its partition (with only two livestreams live, a silence is seen at the idle ticks by wall time).

A partition's checks are due when its clock moved by a second or more since they last ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_NEVER = -(1 << 62)

SourceKey = tuple[int, int]
"""``(state partition, source partition)``."""


@dataclass
class PartitionClocks:
    lead_ms: int
    newest: dict[SourceKey, int] = field(default_factory=dict)
    """Clock per key."""
    top: dict[SourceKey, list[tuple[str, int]]] = field(default_factory=dict)
    """Per key: the two newest contributions of distinct livestreams, newest first."""
    scanned_at: dict[SourceKey, int] = field(default_factory=dict)

    def advance(self, partition: SourceKey, channel_id: str, contribution: int) -> bool:
        """Fold one contribution in; True if the partition's checks are due."""
        clock = self.newest.get(partition, -1)
        if contribution > clock:
            self.newest[partition] = clock = contribution
        top = self.top.get(partition)
        if top is None:
            self.top[partition] = [(channel_id, contribution)]
        elif top[0][0] == channel_id:
            if contribution > top[0][1]:
                top[0] = (channel_id, contribution)
        elif len(top) == 1:
            top.append((channel_id, contribution))
            if contribution > top[0][1]:
                top.reverse()
        elif contribution > top[1][1]:  # the second entry is this livestream's (lower) value or another's
            top[1] = (channel_id, contribution)
            if contribution > top[0][1]:
                top.reverse()
        return clock - self.scanned_at.get(partition, _NEVER) >= 1000

    def clock(self, partition: SourceKey) -> int:
        return self.newest.get(partition, -1)

    def sources(self, partition: int) -> list[int]:
        """The sources with a clock in state partition ``partition``."""
        return sorted(source for (at, source) in self.newest if at == partition)

    def silence_clock(self, partition: SourceKey) -> int:
        top = self.top.get(partition)
        if not top:
            return -1
        if len(top) == 1 or top[0][1] - top[1][1] <= self.lead_ms:
            return top[0][1]
        return top[1][1]

    def scanned(self, partition: SourceKey) -> None:
        self.scanned_at[partition] = self.newest.get(partition, -1)

    def forget(self, partition: int) -> None:
        """Drop every clock of state partition ``partition``."""
        for table in (self.newest, self.top, self.scanned_at):
            for key in [key for key in table if key[0] == partition]:
                del table[key]


@dataclass
class TickHealth:
    """Whether this worker's idle ticks reach Kafka promptly, and since when they have.

    Idle ticks measure silence by wall clock. While Kafka is unreachable no producer's records arrive, so every
    livestream would look silent; a tick written after the outage would then close windows whose events are still
    on their way (the producers reconnect after the worker) and page ``stream_down`` for every livestream. So each
    tick carries ``healthy_since_ms``: the wall time since which this worker's ticks were acknowledged without an
    outage (at the latest its start). Silence is measured from the later of a livestream's last record and that.

    A tick round is *in outage* when the previous round is still unacknowledged ``outage_after_ms`` after it was
    sent, or failed; no new ticks are written until it completes (or, if it never does, for ``abandon_after_ms``:
    then another round is sent, so ticks resume as soon as Kafka answers again, whatever became of the lost
    requests), and ``healthy_since_ms`` then restarts at the moment a round completed. Outages shorter than
    ``outage_after_ms`` are not excluded (keep idle timeouts well above it).
    """

    healthy_since_ms: int
    outage_after_ms: int
    pending_since_ms: int | None = None
    in_outage: bool = False
    abandon_after_ms: int = 30_000

    def may_send(self, now_ms: int, previous_done: bool, previous_failed: bool = False) -> bool:
        """Called at each tick round with the state of the previous round's sends; True if a round may be sent."""
        if previous_failed:
            self.in_outage = True
        if not previous_done:
            pending_ms = now_ms - self.pending_since_ms if self.pending_since_ms is not None else 0
            if pending_ms >= self.outage_after_ms:
                self.in_outage = True
            if pending_ms < self.abandon_after_ms:
                return False
            # Still in the outage: the round sent now counts silence from now at the earliest (it may reach the
            # partitions only once Kafka answers again, before the producers' records held back meanwhile).
            self.healthy_since_ms = max(self.healthy_since_ms, now_ms)
            return True
        if self.in_outage:
            self.in_outage = False
            self.healthy_since_ms = now_ms
        return True

    def sent(self, now_ms: int) -> None:
        self.pending_since_ms = now_ms


def quiet_ms(tick_ms: int, last_record_wall_ms: int, healthy_since_ms: int) -> int:
    """Wall-clock silence of a livestream (or partition) at a tick: since its last record and since the ticking
    worker's Kafka connection was last healthy (:class:`TickHealth`), whichever is later."""
    return tick_ms - max(last_record_wall_ms, healthy_since_ms)
