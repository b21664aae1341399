"""The alert scenario shared by the pure-core test and the end-to-end test: a scaled fair with three incidents.

``build_scenario`` edits a scaled replay: an outage on one livestream (it shares its partition with busy ones,
so the partition's clock shows the silence), a sudden drop of viewers on another, a burst of paid orders on a
third. ``EXPECTED`` rules/subjects are what must fire (and resolve) exactly once each; nothing else may fire except
the campaign's GMV milestones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from aiokafka.partitioner import DefaultPartitioner

from schemas.events import Batch, Event
from stream.alerts import AlertChange, AlertRules
from stream.campaign import CampaignState, ChannelWindowCopy, PartitionProgress, apply_input
from stream.fold import TICK_HEADER, BatchFold, FoldConfig, MemoryStore, Record, encode_tick, forwarded_header, is_tick
from stream.replay.generator import FairReplay
from stream.replay.incidents import ScriptedReplay
from stream.replay.profile import OCOP_FAIR, scaled
from stream.state import WindowSpec

_encode = msgspec.json.Encoder().encode
SCALE, SEED, PARTITIONS = 0.1, 7, 4
MINUTE = 60_000


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    """The partition Kafka's default partitioner (murmur2 of the key) gives a livestream's record key."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(key, every, every))


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


def simulate(replay: ScriptedReplay, rules: AlertRules | None = None, envelope: int = 200) -> list[AlertChange]:
    """Every alert change the pure core gives for ``replay``: the worker's own :class:`stream.fold.BatchFold`
    over the records the replay producer writes (envelopes of up to ``envelope`` events, keyed by livestream, on
    the murmur2 partition, stamped with their newest event time), one batch per fair minute, and its campaign
    copies and partition progress folded by :func:`stream.campaign.apply_input` as the campaign agent does."""
    rules = rules or AlertRules()
    fold = BatchFold(FoldConfig(spec=WindowSpec(), rules=rules, home_partition=partition_of, partitions=PARTITIONS))
    store = MemoryStore()
    changes: list[AlertChange] = []
    offsets: dict[int, int] = {}
    aggregator = CampaignState()
    aggregator_offset = 0

    def feed(record: ChannelWindowCopy | PartitionProgress) -> None:
        nonlocal aggregator_offset
        aggregator_offset += 1
        out = apply_input(aggregator, record, aggregator_offset, PARTITIONS, MINUTE, rules)
        if out:
            changes.extend(out.alerts)

    copies: list[tuple[Record, int]] = []  # tick copies of the minute before, delivered at the next one's start

    def append(partition: int, timestamp: int, key: bytes, value: bytes, headers: Any = None) -> None:
        offsets[partition] = offset = offsets.get(partition, -1) + 1
        records.append(Record(partition, offset, timestamp, key, value, headers))

    for minute in replay.minutes():
        records: list[Record] = []
        for tick, target in copies:
            headers = [forwarded_header(tick.partition, tick.offset, tick.timestamp), *(tick.headers or ())]
            append(target, minute.start_ms, tick.key or b"", tick.value or b"", headers)
        for channel_id, events in minute.by_channel.items():
            partition = partition_of(channel_id.encode())
            for i in range(0, len(events), envelope):
                chunk = events[i : i + envelope]
                value = _encode(Batch(channel_id=channel_id, events=chunk))
                append(partition, max(e.ts_ms for e in chunk), channel_id.encode(), value)
        wall = minute.start_ms + MINUTE
        for partition in range(PARTITIONS):  # each worker's idle tick, at the minute's end
            append(partition, wall, str(partition).encode(), encode_tick(wall, -1), [(TICK_HEADER, b"")])
        records.sort(key=lambda r: (r.partition, r.offset))
        output = fold.fold(records, store, now_ms=wall)
        store.save(output)
        assert not output.dead_letters, "the replay's records are all valid"
        copies = [(record, target) for target, records in output.forwards.items() for record in records]
        assert all(is_tick(record.headers) for record, _ in copies), "and well placed: only ticks are copied"
        changes.extend(change for change, _ in output.alert_changes)
        for copy in output.campaign_copies:
            feed(copy)
        for marker in fold.progress(range(PARTITIONS)):
            feed(marker)
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
