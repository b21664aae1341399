"""The batch fold (``stream.fold.BatchFold``) without services: batching never changes what a batch decides.

Input: a small seeded fair written as the replay producer writes it (envelopes keyed by livestream on their
murmur2 partition, stamped with their newest event time), plus bad records and misrouted records at fixed
offsets. Hypothesis cuts the same records into batches anywhere (the store saved between batches, as the worker
saves its tables) and puts idle ticks anywhere between records; the final windows, late events, dead letters,
forwards, campaign copies, alert transitions and the stored totals must come out the same as with one batch, and
the final 1-minute windows must add up to the oracle computed from the input.

A tick here carries the time of the partition's previous record and says the worker was healthy since then, so
it finds nothing quiet: it runs the partition-level checks at its position without adding information. One last
tick per partition, far past the idle timeout, closes every open window in every run.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import MAX_RECORD_BYTES, Batch, View
from stream.alerts import AlertRules
from stream.fold import (
    TICK_HEADER,
    BatchFold,
    BatchOutput,
    FoldConfig,
    MemoryStore,
    Record,
    encode_tick,
    forwarded_header,
    is_tick,
)
from stream.replay.generator import FairReplay
from stream.replay.oracle import COUNTER_FIELDS
from stream.replay.profile import OCOP_FAIR, scaled
from stream.state import WindowSpec
from tests.alert_scenario import partition_of

PARTITIONS = 3
ENVELOPE = 40
SPEC = WindowSpec()
_encode = msgspec.json.Encoder().encode


def home(key: bytes) -> int:
    return partition_of(key, PARTITIONS)


def new_fold() -> BatchFold:
    return BatchFold(FoldConfig(spec=SPEC, rules=AlertRules(), home_partition=home, partitions=PARTITIONS))


def tick(partition: int, offset: int, wall_ms: int, healthy_since_ms: int) -> Record:
    return Record(partition, offset, wall_ms, str(partition).encode(), encode_tick(wall_ms, healthy_since_ms),
                  [(TICK_HEADER, b"")])  # fmt: skip


def misplaced_key() -> tuple[bytes, int]:
    """A livestream key and a partition that is not its home."""
    key = b"misrouted-live"
    return key, (home(key) + 1) % PARTITIONS


@lru_cache(maxsize=1)
def fair_records() -> tuple[dict[int, list[Record]], Any]:
    """Per partition, its records in offset order (valid envelopes, two bad records, one misrouted), and the
    oracle of the valid events."""
    replay = FairReplay(scaled(OCOP_FAIR, 0.002), seed=5)
    by_partition: dict[int, list[Record]] = {p: [] for p in range(PARTITIONS)}

    def append(partition: int, timestamp: int, key: bytes | None, value: bytes | None) -> None:
        records = by_partition[partition]
        records.append(Record(partition, len(records), timestamp, key, value))

    for minute in replay.minutes():
        for channel_id, events in minute.by_channel.items():
            key = channel_id.encode()
            for i in range(0, len(events), ENVELOPE):
                chunk = events[i : i + ENVELOPE]
                append(home(key), max(e.ts_ms for e in chunk), key, _encode(Batch(channel_id=channel_id, events=chunk)))
        if minute.start_ms % (47 * 60_000) == 0:  # a few bad records in the middle of the traffic
            append(home(b"bad"), minute.start_ms, b"bad", b"{not json")
            key, wrong = misplaced_key()
            append(wrong, minute.start_ms, key, b"{}")
    return by_partition, replay.oracle


def last_ticks(records: dict[int, list[Record]], offset_of: dict[int, int]) -> list[Record]:
    """One tick per partition long after its last record: every open window closes."""
    out = []
    for partition, recs in records.items():
        wall = max((r.timestamp for r in recs), default=0) + 3_600_000
        out.append(tick(partition, offset_of[partition], wall, -1))
    return out


def wall_after(batch: list[Record]) -> int:
    """A batch runs after every one of its records was produced."""
    return max(r.timestamp for r in batch)


def run(cuts: set[int], tick_after: set[int]) -> dict[str, Any]:
    """Fold the fair's records interleaved across partitions, cut into batches after the positions in ``cuts``,
    with a no-information tick after the positions in ``tick_after``; the outputs in a comparable form."""
    records, _ = fair_records()
    fold, store = new_fold(), MemoryStore()
    offsets = {p: 0 for p in records}
    stream: list[Record] = []
    previous: dict[int, int] = {}
    queues = {p: list(recs) for p, recs in records.items()}
    position = 0
    while any(queues.values()):
        for partition in sorted(queues):
            if not queues[partition]:
                continue
            record = queues[partition].pop(0)
            stream.append(Record(partition, offsets[partition], record.timestamp, record.key, record.value))
            offsets[partition] += 1
            previous[partition] = record.timestamp
            if position in tick_after:
                wall = previous[partition]
                stream.append(tick(partition, offsets[partition], wall, wall))
                offsets[partition] += 1
            position += 1
    stream.extend(last_ticks(records, offsets))

    outputs: list[BatchOutput] = []
    batch: list[Record] = []
    for i, record in enumerate(stream):
        batch.append(record)
        if i in cuts:
            outputs.append(fold.fold(batch, store, now_ms=wall_after(batch)))
            store.save(outputs[-1])
            batch = []
    if batch:
        outputs.append(fold.fold(batch, store, now_ms=wall_after(batch)))
        store.save(outputs[-1])
    return summarize(outputs, store)


def summarize(outputs: list[BatchOutput], store: MemoryStore) -> dict[str, Any]:
    finals: Counter[tuple[str, int, int, tuple[int, ...]]] = Counter()
    for out in outputs:
        for closed, _ in out.finals:
            counters = tuple(getattr(closed.counters, n) for n in COUNTER_FIELDS)
            finals[(closed.channel_id, closed.start_ms, closed.size_ms, counters)] += 1
    dead = [(d.record.partition, d.record.key, d.letter.reason, d.index) for o in outputs for d in o.dead_letters]
    copies = [
        (c.channel_id, c.start_ms, c.counters.views, c.counters.gmv_vnd) for o in outputs for c in o.campaign_copies
    ]
    alerts = [(c.rule, c.channel_id, c.window_start_ms, c.status) for o in outputs for c, _ in o.alert_changes]
    forwarded = [(target, r) for o in outputs for target, records in o.forwards.items() for r in records]
    return {
        "finals": finals,
        "late": sorted(e.event_id for out in outputs for e in out.late),
        "dead": sorted(dead),
        "forwards": sorted((r.partition, r.key, target) for target, r in forwarded if not is_tick(r.headers)),
        "tick_copies": sorted((r.partition, r.offset, target) for target, r in forwarded if is_tick(r.headers)),
        "copies": Counter(copies),
        "alerts": sorted(alerts),
        "totals": {cid: s.totals.as_dict() for cid, s in store.states.items()},
        "records": sum(o.counters.records for o in outputs),
        "misrouted": sum(o.counters.misrouted_records for o in outputs),
        "applied": {n: sum(getattr(o.counters.applied, n) for o in outputs) for n in COUNTER_FIELDS},
    }


@lru_cache(maxsize=1)
def one_batch() -> dict[str, Any]:
    return run(cuts=set(), tick_after=set())


def test_one_batch_equals_the_oracle() -> None:
    records, oracle = fair_records()
    out = one_batch()
    minute = {(cid, start): counters for (cid, start, size, counters) in out["finals"] if size == SPEC.size_ms}
    assert set(minute) == set(oracle.windows), "every 1-minute window of the input closes once"
    for (cid, start), counters in minute.items():
        window = oracle.windows[(cid, start)]
        assert counters == tuple(getattr(window, n) for n in COUNTER_FIELDS), (cid, start)
    assert all(n == 1 for n in out["finals"].values()), "no final window twice"
    assert set(out["copies"]) == {(c, s, w.views, w.gmv_vnd) for (c, s), w in oracle.windows.items()}
    for cid, expected in oracle.channels.items():
        assert out["totals"][cid] == {n: getattr(expected, n) for n in COUNTER_FIELDS}, cid
    assert out["applied"] == {n: sum(getattr(c, n) for c in oracle.channels.values()) for n in COUNTER_FIELDS}
    bad = sum(1 for recs in records.values() for r in recs if r.key == b"bad")
    misrouted = sum(1 for recs in records.values() for r in recs if r.key == misplaced_key()[0])
    assert bad >= 2 and len(out["dead"]) == bad
    assert out["misrouted"] == misrouted == bad and len(out["forwards"]) == misrouted
    assert out["records"] == sum(len(recs) for recs in records.values()) - misrouted, "a forward counts at home only"


total_records = sum(len(recs) for recs in fair_records()[0].values())
positions = st.sets(st.integers(min_value=0, max_value=total_records + 60), max_size=40)


@settings(max_examples=25, deadline=None)
@given(cuts=positions, tick_after=positions)
def test_any_batching_and_ticks_anywhere_give_the_same_outputs(cuts: set[int], tick_after: set[int]) -> None:
    got = run(cuts, tick_after)
    want = one_batch()
    for name in (
        "finals",
        "late",
        "dead",
        "forwards",
        "copies",
        "alerts",
        "totals",
        "records",
        "misrouted",
        "applied",
    ):
        assert got[name] == want[name], name


def _view(i: int, ts: int, channel: str = "c1") -> View:
    return View(event_id=f"e{i}", channel_id=channel, creator_id="cr", campaign="f", user_id=f"u{i}", ts_ms=ts)


def _record(offset: int, events: list[View], channel: str = "c1") -> Record:
    key = channel.encode()
    value = _encode(Batch(channel_id=channel, events=events))
    return Record(home(key), offset, max(e.ts_ms for e in events), key, value)


BASE = 1_687_572_000_000


def test_an_idle_tick_closes_the_windows_of_a_quiet_livestream() -> None:
    fold, store = new_fold(), MemoryStore()
    first = _record(0, [_view(0, BASE + 1_000), _view(1, BASE + 2_000)])
    out = fold.fold([first], store, now_ms=BASE + 2_000)
    store.save(out)
    assert out.finals == [], "a window stays open while its livestream may still send"
    early = tick(first.partition, 1, BASE + 2_000 + SPEC.idle_timeout_ms - 1, -1)
    out = fold.fold([early], store, now_ms=early.timestamp)
    assert out.finals == [], "not quiet for the idle timeout yet"
    late = tick(first.partition, 2, BASE + 2_000 + SPEC.idle_timeout_ms, -1)
    out = fold.fold([late], store, now_ms=late.timestamp)
    starts = {(c.start_ms, c.size_ms) for c, _ in out.finals}
    assert (BASE, SPEC.size_ms) in starts
    assert [c.counters.views for c in out.campaign_copies] == [2]


def test_quiet_counts_from_the_workers_healthy_time_not_from_an_outage() -> None:
    fold, store = new_fold(), MemoryStore()
    first = _record(0, [_view(0, BASE + 1_000)])
    store.save(fold.fold([first], store, now_ms=BASE + 1_000))
    wall = BASE + 1_000 + SPEC.idle_timeout_ms + 5_000
    out = fold.fold([tick(first.partition, 1, wall, healthy_since_ms=wall - 1_000)], store, now_ms=wall)
    assert out.finals == [], "a worker that just regained Kafka has not seen the livestream quiet"


def test_a_misrouted_record_is_forwarded_unread_and_counted() -> None:
    fold, store = new_fold(), MemoryStore()
    key, wrong = misplaced_key()
    value = _encode(Batch(channel_id=key.decode(), events=[_view(0, BASE, key.decode())]))
    out = fold.fold([Record(wrong, 0, BASE, key, value)], store, now_ms=BASE)
    assert {target: [r.offset for r in rs] for target, rs in out.forwards.items()} == {home(key): [0]}
    assert out.counters.misrouted_records == 1 and out.counters.applied_events == 0
    assert out.states == [] and out.finals == []


def test_a_bad_record_and_a_bad_event_become_dead_letters_and_the_rest_counts() -> None:
    fold, store = new_fold(), MemoryStore()
    good = _record(0, [_view(0, BASE)])
    bad = Record(good.partition, 1, BASE, b"c1", b"\xff\xfe not json")
    envelope = msgspec.json.encode(
        {"type": "batch", "channel_id": "c1", "events": [msgspec.to_builtins(_view(1, BASE)), {"type": "?"}]}
    )
    mixed = Record(good.partition, 2, BASE, b"c1", envelope)
    out = fold.fold([good, bad, mixed], store, now_ms=BASE)
    assert sorted((d.record.offset, d.index) for d in out.dead_letters) == [(1, None), (2, 1)]
    assert all(d.letter.reason and d.letter.message for d in out.dead_letters)
    assert out.counters.applied_events == 2
    assert [s.totals.views for s in out.states] == [2]


def test_a_record_read_again_after_a_restart_counts_as_redelivered_not_twice() -> None:
    fold, store = new_fold(), MemoryStore()
    record = _record(0, [_view(0, BASE), _view(1, BASE + 10)])
    store.save(fold.fold([record], store, now_ms=BASE))
    again = new_fold().fold([record], store, now_ms=BASE)  # a fresh worker, from the stored tables
    assert again.counters.redelivered_records == 1 and again.counters.applied_events == 0
    store.save(again)
    assert store.states["c1"].totals.views == 2


def test_a_table_read_between_a_batch_and_its_save_does_not_roll_the_index_back() -> None:
    """A resync after an assignment reads the tables while a batch waits for Kafka: its stale rows must not
    replace the fold's views, or a livestream that went quiet holds campaign progress back for good."""
    fold, store = new_fold(), MemoryStore()
    first = _record(0, [_view(0, BASE + 1_000)])
    store.save(fold.fold([first], store, now_ms=BASE + 1_000))
    before = store.state("c1", first.partition)
    assert before is not None and before.windows
    wall = BASE + 1_000 + SPEC.idle_timeout_ms
    # The partition's own tick, and the ticks of the other partitions copied to it: every source is idle.
    ticks = [tick(first.partition, 1, wall, -1)]
    for offset, other in enumerate(p for p in range(PARTITIONS) if p != first.partition):
        copied = tick(other, 7, wall, -1)
        headers = [forwarded_header(other, 7, wall), *(copied.headers or ())]
        ticks.append(Record(first.partition, 2 + offset, wall, copied.key, copied.value, headers))
    closing = fold.fold(ticks, store, now_ms=wall)  # not saved yet
    assert closing.finals
    assert not fold.index.add_stored(before), "the fold's own view is newer than the table's row"
    [progress] = fold.progress([first.partition])
    assert progress.idle and progress.settled_through_ms > BASE, "no open window holds the partition back"
    fresh = new_fold()
    assert fresh.index.add_stored(before) and fresh.index.open_bounds[first.partition] == {
        "c1": before.closed_through_ms
    }


def test_a_misrouted_record_over_the_size_limit_is_dead_lettered_at_its_source() -> None:
    fold, store = new_fold(), MemoryStore()
    key, wrong = misplaced_key()
    huge = b'{"type":"batch","channel_id":"x","events":[' + b" " * MAX_RECORD_BYTES + b"]}"
    out = fold.fold([Record(wrong, 7, BASE, key, huge)], store, now_ms=BASE)
    assert out.forwards == {}, "a copy of it could neither be produced nor read at home"
    assert [(d.record.partition, d.record.offset, d.letter.reason) for d in out.dead_letters] == [
        (wrong, 7, "oversized")
    ]
    assert out.counters.records == 1 and out.counters.misrouted_records == 1


def test_a_tick_from_the_future_closes_nothing_a_tick_of_now_would_not() -> None:
    """A tick record stamped an hour ahead (a crafted record, or a producer clock ahead on a topic that keeps
    producer timestamps) counts as a tick of the time the batch runs at: a livestream heard from a second ago keeps
    its windows open; an idle-long-enough one still closes, as with the worker's own tick."""
    fold, store = new_fold(), MemoryStore()
    first = _record(0, [_view(0, BASE + 1_000)])
    store.save(fold.fold([first], store, now_ms=BASE + 1_000))
    now = BASE + 2_000
    out = fold.fold([tick(first.partition, 1, now + 3_600_000, healthy_since_ms=-1)], store, now_ms=now)
    assert out.finals == [], "the livestream was heard from a second ago"
    assert fold.source_ticks[(first.partition, first.partition)] == (now, -1)
    later = BASE + 1_000 + SPEC.idle_timeout_ms + 1_000
    out = fold.fold([tick(first.partition, 2, later + 3_600_000, healthy_since_ms=-1)], store, now_ms=later)
    assert out.finals, "quiet for longer than the idle timeout at the time the batch runs"


def test_one_event_stamped_30_minutes_ahead_makes_no_other_event_late() -> None:
    """A clock 30 minutes fast (accepted: within the hour of ``max_future``) stamps one event; records are appended
    when they happen. The livestream's watermark follows event times only up to the lead past each record's
    append time, so its next events are on time; the early event counts in its own window."""
    fold, store = new_fold(), MemoryStore()
    lead = fold.config.spec.watermark_lead_ms
    assert lead < 30 * 60_000
    events = [_view(i, BASE + i * 1_000) for i in range(180)]
    ahead = _view(1_000, BASE + 10_000 + 30 * 60_000)
    records = []
    for offset, event in enumerate(events):
        batch = [event, ahead] if offset == 10 else [event]
        key = b"c1"
        appended = BASE + offset * 1_000  # the broker's time: the event's own
        records.append(Record(home(key), offset, appended, key, _encode(Batch(channel_id="c1", events=batch))))
    out = fold.fold(records, store, now_ms=BASE + 180_000)
    assert out.late == [], "no event made late by the one ahead"
    store.save(out)
    quiet = BASE + 180_000 + SPEC.idle_timeout_ms
    closing = fold.fold([tick(home(b"c1"), 180, quiet, -1)], store, now_ms=quiet)
    minutes = {c.start_ms: c.counters.views for c, _ in out.finals + closing.finals if c.size_ms == SPEC.size_ms}
    assert minutes == {BASE: 60, BASE + 60_000: 60, BASE + 120_000: 60, BASE + 30 * 60_000: 1}


def test_a_forwarded_header_naming_no_partition_of_the_topic_is_not_believed() -> None:
    """A producer's record with a forged ``livestream-forwarded-from`` naming partition 999: no tick ever comes from
    there, so the record counts as its own partition's (its livestream still closes when idle, and the partition's
    campaign progress is not held back by a source that does not exist)."""
    fold, store = new_fold(), MemoryStore()
    record = _record(0, [_view(0, BASE + 1_000)])
    forged = Record(record.partition, 0, record.timestamp, record.key, record.value, [forwarded_header(999, 5, 0)])
    store.save(fold.fold([forged], store, now_ms=BASE + 1_000))
    assert fold.index.views["c1"].source == record.partition
    wall = BASE + 1_000 + SPEC.idle_timeout_ms
    home_partition = record.partition
    closing = fold.fold([tick(home_partition, 1, wall, -1)], store, now_ms=wall)
    assert closing.finals, "closed as idle at its own partition's tick"
    others = [tick(p, 1, wall, -1) for p in range(PARTITIONS) if p != home_partition]
    copies = [
        Record(
            home_partition, 2 + i, wall, t.key, t.value, [forwarded_header(t.partition, 1, wall), *(t.headers or ())]
        )
        for i, t in enumerate(others)
    ]
    store.save(fold.fold(copies, store, now_ms=wall))
    store.save(closing)
    [progress] = fold.progress([home_partition])
    assert progress.idle and progress.settled_through_ms > BASE, "no phantom source holds the partition back"
