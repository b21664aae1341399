"""Placement independence of the pure core: records written by a producer whose partitioner is not the pipeline's
(CRC32, as librdkafka's default) reach their livestream's home partition as forwarded copies, after a lag that
depends on how busy each forwarding partition is. Any lags, any interleaving of the sources at a partition that
keeps each source's order, give the same final windows, late events, alerts and campaign copies, and the windows
equal the oracle.

The simulation: every partition's log holds what its producer appended there plus idle ticks every 30 s; each
record whose home is another partition, and each tick, is copied (with :func:`stream.fold.forwarded_header`) to its
target, arriving there after a lag drawn per copy; a partition's log is its own records and the arriving copies,
by arrival time (ties in a drawn order). Each log is folded through :class:`stream.fold.BatchFold`.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import Batch
from stream.alerts import AlertRules
from stream.fold import TICK_HEADER, BatchFold, FoldConfig, MemoryStore, Record, encode_tick, forwarded_header, is_tick
from stream.replay.generator import FairReplay
from stream.replay.oracle import COUNTER_FIELDS
from stream.replay.profile import OCOP_FAIR, scaled
from stream.state import WindowSpec
from tests.unit.test_batch_fold import ENVELOPE, PARTITIONS, home

SPEC = WindowSpec()
TICK_EVERY_MS = 30_000
_encode = msgspec.json.Encoder().encode


def crc32_placement(key: bytes) -> int:
    return zlib.crc32(key) % PARTITIONS


def appended_logs(placement: Any) -> tuple[dict[int, list[Record]], Any]:
    """Each partition's log as its producer appended it (offsets, append times), with the worker's idle ticks."""
    replay = FairReplay(scaled(OCOP_FAIR, 0.002), seed=11)
    logs: dict[int, list[Record]] = {p: [] for p in range(PARTITIONS)}
    next_tick = dict.fromkeys(logs, -1)
    clock = [-1]  # the broker's append time: never backwards

    def append(partition: int, timestamp: int, key: bytes, value: bytes, headers: Any = None) -> None:
        log = logs[partition]
        log.append(Record(partition, len(log), timestamp, key, value, headers))

    def ticks_until(timestamp: int) -> None:
        for partition in logs:
            if next_tick[partition] < 0:
                next_tick[partition] = timestamp - timestamp % TICK_EVERY_MS + TICK_EVERY_MS
            while next_tick[partition] <= timestamp:
                wall = next_tick[partition]
                append(partition, wall, str(partition).encode(), encode_tick(wall, -1), [(TICK_HEADER, b"")])
                next_tick[partition] += TICK_EVERY_MS

    for minute in replay.minutes():
        for channel_id, events in minute.by_channel.items():
            key = channel_id.encode()
            for i in range(0, len(events), ENVELOPE):
                chunk = events[i : i + ENVELOPE]
                appended = clock[0] = max(clock[0], *(e.ts_ms for e in chunk))
                ticks_until(appended)
                append(placement(key), appended, key, _encode(Batch(channel_id=channel_id, events=chunk)))
    ticks_until(max(r.timestamp for log in logs.values() for r in log) + 3_600_000)  # every window closes
    return logs, replay.oracle


def arrived_logs(logs: dict[int, list[Record]], lag_ms: list[int], ties: random.Random) -> dict[int, list[Record]]:
    """Each partition's log as its consumer reads it: its own records and the copies forwarded to it."""
    arrivals: dict[int, list[tuple[int, float, int, Record]]] = {p: [] for p in logs}
    for source, log in logs.items():
        for record in log:
            arrivals[source].append((record.timestamp, ties.random(), 0, record))
        last_arrival = -1
        for index, record in enumerate(log):
            targets = [p for p in logs if p != source] if is_tick(record.headers) else [home(record.key or b"")]
            targets = [t for t in targets if t != source]
            if not targets:
                continue
            # A source's copies leave in its order: each one after the previous, at least its lag after the original.
            last_arrival = max(last_arrival, record.timestamp + lag_ms[(source * 7919 + index) % len(lag_ms)])
            for target in targets:
                headers = [forwarded_header(source, record.offset, record.timestamp), *(record.headers or ())]
                copy = Record(target, -1, last_arrival, record.key, record.value, headers)
                arrivals[target].append((last_arrival, ties.random(), 1, copy))
    out: dict[int, list[Record]] = {}
    for partition, items in arrivals.items():
        # By arrival; copies of one source keep their order (same arrival: the tie-break keeps their index order).
        ordered = _keep_source_order(sorted(items, key=lambda item: (item[0], item[1])))
        out[partition] = [
            Record(partition, offset, r.timestamp, r.key, r.value, r.headers)
            for offset, (_, _, _, r) in enumerate(ordered)
        ]
    return out


def _keep_source_order(items: list[tuple[int, float, int, Record]]) -> list[tuple[int, float, int, Record]]:
    """Items of one source that share an arrival time go in the source's order (their tie-break is random)."""
    by_source: dict[tuple[int, int], list[int]] = {}
    for position, (_, _, _, record) in enumerate(items):
        source = _source(record)
        by_source.setdefault(source, []).append(position)
    result = list(items)
    for positions in by_source.values():
        members = sorted((items[p] for p in positions), key=lambda item: _source_offset(item[3]))
        for position, item in zip(positions, members, strict=True):
            result[position] = item
    return result


def _source(record: Record) -> tuple[int, int]:
    for name, value in record.headers or ():
        if name == "livestream-forwarded-from":
            return (int(value.split(b"@")[0]), 1)
    return (record.partition, 0)


def _source_offset(record: Record) -> int:
    for name, value in record.headers or ():
        if name == "livestream-forwarded-from":
            return int(value.split(b"@")[1])
    return record.offset


def fold_all(logs: dict[int, list[Record]]) -> dict[str, Any]:
    fold = BatchFold(FoldConfig(spec=SPEC, rules=AlertRules(), home_partition=home, partitions=PARTITIONS))
    store = MemoryStore()
    finals: Counter[tuple[str, int, int, tuple[int, ...]]] = Counter()
    late, alerts, copies = [], [], []
    for partition in sorted(logs):
        log = logs[partition]
        out = fold.fold(log, store, now_ms=max(r.timestamp for r in log))
        store.save(out)
        for closed, _ in out.finals:
            counters = tuple(getattr(closed.counters, n) for n in COUNTER_FIELDS)
            finals[(closed.channel_id, closed.start_ms, closed.size_ms, counters)] += 1
        late += [e.event_id for e in out.late]
        alerts += [(c.rule, c.channel_id, c.window_start_ms, c.status, c.at_ms) for c, _ in out.alert_changes]
        copies += [(c.channel_id, c.start_ms, tuple(getattr(c.counters, n) for n in COUNTER_FIELDS))
                   for c in out.campaign_copies]  # fmt: skip
    return {"finals": finals, "late": sorted(late), "alerts": sorted(alerts), "copies": sorted(copies)}


def _baseline() -> dict[str, Any]:
    logs, _ = appended_logs(crc32_placement)
    return fold_all(arrived_logs(logs, [0], random.Random(0)))


BASELINE: dict[str, Any] = {}


def baseline() -> dict[str, Any]:
    if not BASELINE:
        BASELINE.update(_baseline())
    return BASELINE


def test_crc32_placement_moves_most_livestreams_and_still_matches_the_oracle() -> None:
    logs, oracle = appended_logs(crc32_placement)
    keys = {r.key for log in logs.values() for r in log if not is_tick(r.headers)}
    moved = sum(1 for key in keys if crc32_placement(key or b"") != home(key or b""))
    assert moved >= len(keys) // 2, "the simulation must forward most livestreams"
    got = baseline()
    minute = {(c, s): counters for (c, s, size, counters), n in got["finals"].items() if size == SPEC.size_ms}
    assert set(minute) == set(oracle.windows)
    for (channel_id, start), counters in minute.items():
        window = oracle.windows[(channel_id, start)]
        assert counters == tuple(getattr(window, n) for n in COUNTER_FIELDS), (channel_id, start)
    assert all(n == 1 for n in got["finals"].values()), "no final window twice"
    assert got["late"] == []


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lag_ms=st.lists(st.sampled_from([0, 200, 5_000, 20_000, 45_000, 120_000]), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_forwarding_lag_and_interleaving_of_sources_gives_the_same_outputs(lag_ms: list[int], seed: int) -> None:
    logs, _ = appended_logs(crc32_placement)
    got = fold_all(arrived_logs(logs, lag_ms, random.Random(seed)))
    want = baseline()
    for name in ("finals", "late", "alerts", "copies"):
        assert got[name] == want[name], name
