"""The alert scenario shared by the pure-core test and the end-to-end test: a scaled fair with three incidents.

``build_scenario`` edits a scaled replay: an outage on one livestream (it shares its partition with busy ones,
so the partition's clock shows the silence), a sudden drop of viewers on another, a burst of paid orders on a
third. ``EXPECTED`` rules/subjects are what must fire (and resolve) exactly once each; nothing else may fire except
the campaign's GMV milestones.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.partitioner import DefaultPartitioner

from schemas.events import Event
from stream.alerts import (
    AlertChange,
    AlertRules,
    evaluate_closed_window,
    evaluate_gap,
    evaluate_silence,
    resolve_if_active,
    stream_down_gap_ms,
)
from stream.campaign import CampaignState, ChannelWindowCopy, PartitionProgress, apply_input, settled_through
from stream.replay.generator import FairReplay
from stream.replay.incidents import ScriptedReplay
from stream.replay.profile import OCOP_FAIR, scaled
from stream.state import ChannelState, FoldEffects, WindowSpec, apply_record, close_windows, ended_watermark

SCALE, SEED, PARTITIONS = 0.1, 7, 4
MINUTE = 60_000


def partition_of(channel_id: str, partitions: int = PARTITIONS) -> int:
    """The partition Kafka's default partitioner (murmur2 of the key) gives a livestream."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(channel_id.encode(), every, every))


@dataclass(frozen=True)
class Scenario:
    replay: ScriptedReplay
    outage: tuple[str, int, int]
    """(livestream, start, end) of the outage."""
    drop: tuple[str, int]
    """(livestream, time) of the viewer drop."""
    surge: tuple[str, int]
    """(livestream, time) of the order burst."""

    def expected(self) -> dict[tuple[str, str, int], int]:
        """(rule, livestream, window start) -> 1 for each incident's alert."""
        down_channel, down_start, _ = self.outage
        last_before = max(
            e.ts_ms for e in self.replay.events() if e.channel_id == down_channel and e.ts_ms < down_start
        )
        return {
            ("stream_down", down_channel, last_before - last_before % MINUTE): 1,
            ("viewer_drop", self.drop[0], self.drop[1] - self.drop[1] % MINUTE): 1,
            ("order_surge", self.surge[0], self.surge[1] - self.surge[1] % MINUTE): 1,
        }


def build_scenario() -> Scenario:
    replay = ScriptedReplay.of(FairReplay(scaled(OCOP_FAIR, SCALE), SEED))
    start = replay.slices[0].start_ms
    outage = ("ocop-live-01", start + 100 * MINUTE + 5_000, start + 104 * MINUTE)
    drop = ("ocop-live-10", start + 130 * MINUTE + 20_000)
    surge = ("ocop-live-13", start + 160 * MINUTE + 30_000)
    replay.outage(*outage)
    replay.viewer_drop(*drop, share=0.7)
    replay.order_surge(*surge, orders=40, amount_vnd=150_000)
    return Scenario(replay, outage, drop, surge)


def simulate(replay: ScriptedReplay, rules: AlertRules | None = None) -> list[AlertChange]:
    """Every alert change the pure core gives for ``replay``, folded like the agent does (per-minute records,
    stream-down against each partition's clock, campaign windows released on partition progress)."""
    rules = rules or AlertRules()
    spec = WindowSpec()
    states: dict[str, ChannelState] = {}
    changes: list[AlertChange] = []
    clocks: dict[int, int] = {}
    offsets: dict[int, int] = {}
    aggregator = CampaignState()
    aggregator_offset = 0

    def feed(record: ChannelWindowCopy | PartitionProgress) -> None:
        nonlocal aggregator_offset
        aggregator_offset += 1
        out = apply_input(aggregator, record, aggregator_offset, PARTITIONS, MINUTE, rules)
        if out:
            changes.extend(out.alerts)

    for minute in replay.minutes():
        for channel_id, events in minute.by_channel.items():
            partition = partition_of(channel_id)
            state = states.setdefault(channel_id, ChannelState(channel_id=channel_id))
            offsets[partition] = offsets.get(partition, -1) + 1
            effects = FoldEffects(gap_ms=stream_down_gap_ms(rules))
            apply_record(state, events, partition, offsets[partition], spec, effects)
            for gap in effects.gaps:
                changes.extend(evaluate_gap(state, gap, rules))
            back = resolve_if_active(state, rules)
            if back:
                changes.append(back)
            clocks[partition] = max(clocks.get(partition, -1), state.max_ts_ms)
        for channel_id, state in states.items():
            change = evaluate_silence(state, clocks[state.partition], rules)
            if change:
                changes.append(change)
            for window in close_windows(state, ended_watermark(state, spec, clocks[state.partition]), spec):
                one_minute = window.size_ms == MINUTE
                changes.extend(evaluate_closed_window(state, window, rules, one_minute))
                if one_minute:
                    feed(ChannelWindowCopy(channel_id, state.campaign, window.start_ms, window.counters))
        for partition in range(PARTITIONS):
            owned = [s for s in states.values() if s.partition == partition]
            bounds = {s.channel_id: s.closed_through_ms for s in owned if s.windows}
            settled = settled_through(bounds, clocks.get(partition, -1), MINUTE, spec.grace_ms, idle=False)
            feed(PartitionProgress(partition, settled))
    return changes


def incident_changes(changes: list[AlertChange]) -> dict[tuple[str, str, int], list[str]]:
    """Livestream alert changes as (rule, livestream, window start) -> statuses in order."""
    out: dict[tuple[str, str, int], list[str]] = {}
    for change in changes:
        if change.channel_id:
            out.setdefault((change.rule, change.channel_id, change.window_start_ms), []).append(change.status)
    return out


def events_of(replay: ScriptedReplay) -> list[Event]:
    return list(replay.events())
