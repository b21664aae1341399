"""The batch fold: what a batch of events records does, decided without Kafka, Redis or faust.

:class:`BatchFold` takes the records of owned events partitions, each partition's records in offset order, and
returns a :class:`BatchOutput`: every final window, alert transition, campaign copy, dead letter, forward, late
event, state and dedup row the batch produced. The caller (``agents/fold.py``) owns reading, the cursor,
publishing, saving and committing; the fold owns *when* things happen:

1. an idle-tick record (header :data:`TICK_HEADER`) runs the partition-level checks at its position;
2. a record on a partition other than its key's home partition is forwarded there, unread (one over the
   decoder's size limit is dead-lettered here instead, naming the original record);
3. the record is decoded (bad records and bad events of envelopes become dead letters) and folded into its
   livestream's state (:func:`stream.state.apply_record`);
4. right after each record, the windows its livestream's watermark passed close, the silences it ends and the
   gaps it reveals are judged, and when the partition clock moved by a second the partition-level checks run.

Nothing depends on how records were cut into batches: every decision is taken at a record's position in its
partition, and what is kept between batches (partition clocks, each owned livestream's compact view, dedup minutes
read before) is what a fresh fold would load from the store. States are read from the :class:`FoldStore` once per
batch; the output says which to write back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from schemas.events import MAX_RECORD_BYTES, Event
from stream import campaign
from stream.alerts import (
    AlertChange,
    AlertRules,
    evaluate_closed_window,
    evaluate_gap,
    evaluate_silence,
    resolve_if_active,
    stream_down_gap_ms,
)
from stream.clock import PartitionClocks, SourceKey, quiet_ms
from stream.decode import DeadLetter, TimeBounds, decode_record
from stream.settings import Settings
from stream.snapshot import ChannelView, ClosedWindow
from stream.state import (
    ChannelState,
    Counters,
    FoldEffects,
    IdBucket,
    IdRow,
    IdRows,
    OrderBook,
    OrderRow,
    WindowSpec,
    apply_record,
    close_windows,
    decode_state,
    encode_state,
    ended_watermark,
    idle_watermark,
    watermark,
)

TICK_HEADER = "livestream-tick"
"""Header that marks an idle-tick record (its key is the partition number; never a livestream's record)."""

FORWARDED_HEADER = "livestream-forwarded-from"
"""Header of a forwarded copy: ``<partition>@<offset>@<append ms>`` of the record its producer wrote."""

ID_CACHE_BUCKETS = 20_000
"""Dedup minutes kept in memory across batches (cleared when exceeded; a few hundred bytes to a few MB each)."""

KEY_CACHE_SIZE = 200_000
"""Record keys whose home partition is kept (cleared when exceeded)."""


class TickValue(msgspec.Struct):
    """What an idle-tick record carries: when the worker wrote it, and since when its Kafka connection was healthy
    (-1 when absent or unreadable)."""

    wall_ms: int = -1
    healthy_since_ms: int = -1


_tick_decoder = msgspec.json.Decoder(TickValue)


def encode_tick(wall_ms: int, healthy_since_ms: int) -> bytes:
    """The value of an idle-tick record."""
    return msgspec.json.encode({"type": "tick", "wall_ms": wall_ms, "healthy_since_ms": healthy_since_ms})


def decode_tick(value: bytes | None) -> TickValue:
    """The :class:`TickValue` of a tick record (defaults when unreadable: no time of its own, no floor)."""
    try:
        return _tick_decoder.decode(value or b"{}")
    except (msgspec.DecodeError, UnicodeDecodeError):
        return TickValue()


def forwarded_header(partition: int, offset: int, timestamp_ms: int) -> tuple[str, bytes]:
    """The :data:`FORWARDED_HEADER` of a copy of the record at ``partition``/``offset`` appended at ``timestamp_ms``."""
    return FORWARDED_HEADER, f"{partition}@{offset}@{timestamp_ms}".encode()


def origin(record: SourceRecord) -> tuple[int, int, int]:
    """``(partition, offset, append ms)`` of the record the producer wrote: the record itself, or the original
    named by a copy's :data:`FORWARDED_HEADER`. The time is never later than the copy's own (a header claiming a
    later time, or one that does not parse, is not believed), so a copy cannot move a clock past its arrival."""
    for name, value in record.headers or ():
        if name == FORWARDED_HEADER:
            try:
                fields = value.decode().split("@")
                partition, offset = int(fields[0]), int(fields[1])
                appended = int(fields[2]) if len(fields) > 2 else record.timestamp
            except (ValueError, IndexError, UnicodeDecodeError):
                break
            return partition, offset, min(appended, record.timestamp)
    return record.partition, record.offset, record.timestamp


def is_tick(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    return bool(headers) and any(name == TICK_HEADER for name, _ in headers or ())


class SourceRecord(Protocol):
    """What the fold reads of an events record (faust's and aiokafka's consumer records have these)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]] | None: ...


@dataclass(frozen=True, slots=True)
class Record:
    """An events record built by hand (tests, simulations): the fields of :class:`SourceRecord`."""

    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] | None = None


class FoldStore(Protocol):
    """Stored rows of the partition a livestream lives on (all empty for a livestream never seen)."""

    def state(self, channel_id: str, partition: int) -> ChannelState | None: ...
    def id_row(self, channel_id: str, bucket: int, part: int, partition: int) -> IdRow: ...
    def order_row(self, channel_id: str, order_id: str, partition: int) -> OrderRow: ...


@dataclass
class MemoryStore:
    """A :class:`FoldStore` in dicts, written with :meth:`save` (unit tests and simulations)."""

    states: dict[str, ChannelState] = field(default_factory=dict)
    ids: dict[tuple[str, int, int], IdRow] = field(default_factory=dict)
    orders: dict[tuple[str, str], OrderRow] = field(default_factory=dict)

    def state(self, channel_id: str, partition: int) -> ChannelState | None:
        stored = self.states.get(channel_id)
        return decode_state(encode_state(stored)) if stored is not None else None

    def id_row(self, channel_id: str, bucket: int, part: int, partition: int) -> IdRow:
        return dict(self.ids.get((channel_id, bucket, part), {}))

    def order_row(self, channel_id: str, order_id: str, partition: int) -> OrderRow:
        return dict(self.orders.get((channel_id, order_id), {}))

    def save(self, output: BatchOutput) -> None:
        """Write what a batch says to write, as the worker does with its tables."""
        for key, row, _ in output.id_writes:
            self.ids[key] = dict(row)
        for key, _ in output.id_deletes:
            self.ids.pop(key, None)
        for order_key, order_row, _ in output.order_writes:
            self.orders[order_key] = dict(order_row)
        for state in output.states:
            self.states[state.channel_id] = decode_state(encode_state(state))


@dataclass(frozen=True)
class FoldConfig:
    """Everything the fold decides by. ``home_partition`` maps a record key to the partition its livestream's
    state lives on; ``max_past_ms``/``max_future_ms`` bound accepted event times around the batch's wall time."""

    spec: WindowSpec
    rules: AlertRules
    home_partition: Callable[[bytes], int]
    partitions: int = 1
    """Partitions of the events topic (a tick is copied to each of the others)."""
    max_clock_lead_ms: int = 5_000
    order_horizon_ms: int = 86_400_000
    max_past_ms: int = 3650 * 86_400_000
    max_future_ms: int = 3_600_000

    @classmethod
    def from_settings(cls, settings: Settings, rules: AlertRules, home_partition: Callable[[bytes], int]) -> FoldConfig:
        return cls(
            spec=window_spec(settings),
            rules=rules,
            home_partition=home_partition,
            partitions=settings.partitions,
            max_clock_lead_ms=settings.max_clock_lead_s * 1000,
            order_horizon_ms=settings.order_horizon_s * 1000,
            max_past_ms=settings.max_past_days * 86_400_000,
            max_future_ms=settings.max_future_s * 1000,
        )


def window_spec(settings: Settings) -> WindowSpec:
    return WindowSpec(
        size_ms=settings.window_size_s * 1000,
        grace_ms=settings.window_grace_s * 1000,
        lateness_ms=settings.allowed_lateness_s * 1000,
        hop_windows=settings.hop_windows,
        dedup_horizon_ms=settings.dedup_horizon_s * 1000,
        idle_timeout_ms=int(settings.idle_timeout_s * 1000),
        watermark_lead_ms=settings.max_clock_lead_s * 1000,
    )


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """A record, or one event of an envelope (``index``, its ``raw`` bytes), rejected by the decoder."""

    record: SourceRecord
    letter: DeadLetter
    index: int | None = None
    raw: bytes | None = None


@dataclass
class BatchCounters:
    """What a batch counted (the worker adds them to its pipeline counters)."""

    records: int = 0
    """Records processed here, ticks and forwarded records excluded (a forwarded record counts at its home)."""
    ticks: int = 0
    applied_events: int = 0
    redelivered_records: int = 0
    duplicate_events: int = 0
    duplicate_orders: int = 0
    misrouted_records: int = 0
    applied: Counters = field(default_factory=Counters)
    """What the batch added to its livestreams' stream-to-date counters (views, orders, GMV...): the increments this
    worker counted itself, so a worker's sum of them only grows, whatever partitions it gains or loses."""


@dataclass
class BatchOutput:
    """Everything one batch must do, in the order found; partitions are the events partitions of the records.

    ``states`` are to be written back (changed, or loaded and not yet known to the caller's serving view); dedup
    rows and order rows are keyed by their livestream, with the partition whose table holds them.
    """

    finals: list[tuple[ClosedWindow, int]] = field(default_factory=list)
    alert_changes: list[tuple[AlertChange, int]] = field(default_factory=list)
    campaign_copies: list[campaign.ChannelWindowCopy] = field(default_factory=list)
    dead_letters: list[DeadRecord] = field(default_factory=list)
    forwards: dict[int, list[SourceRecord]] = field(default_factory=dict)
    """Records to produce again on another partition, by target partition, each target's in record order: records
    on a partition other than their home, and each idle tick written here, copied to every other partition (see
    :class:`BatchFold`). Copies carry :func:`forwarded_header` of their original. (Grouped by target, not a list of
    pairs: a batch of misplaced records would otherwise keep a pair each alive until it is published.)"""
    late: list[Event] = field(default_factory=list)
    states: list[ChannelState] = field(default_factory=list)
    id_writes: list[tuple[tuple[str, int, int], IdRow, int]] = field(default_factory=list)
    id_deletes: list[tuple[tuple[str, int, int], int]] = field(default_factory=list)
    order_writes: list[tuple[tuple[str, str], OrderRow, int]] = field(default_factory=list)
    viewers: dict[str, list[str]] = field(default_factory=dict)
    """New viewer ids per livestream (for the unique-viewer HyperLogLogs)."""
    counters: BatchCounters = field(default_factory=BatchCounters)

    def forward(self, record: SourceRecord, target: int) -> None:
        """Copy ``record`` to partition ``target`` (after what this batch copied there before)."""
        copies = self.forwards.get(target)
        if copies is None:
            copies = self.forwards[target] = []
        copies.append(record)


class PartitionIndex:
    """Compact views of the owned livestreams, by events partition, and the open-window bounds campaign progress
    needs. Kept in step with every state the fold writes back and every state the caller loads."""

    def __init__(self) -> None:
        self.views: dict[str, ChannelView] = {}
        self.by_partition: dict[int, dict[str, ChannelView]] = {}
        self.open_bounds: dict[int, dict[str, int]] = {}
        """Per partition: ``closed_through_ms`` of each livestream with an open window."""

    def update(self, state: ChannelState) -> ChannelView:
        old = self.views.get(state.channel_id)
        if old is not None and old.partition != state.partition:
            self.by_partition.get(old.partition, {}).pop(state.channel_id, None)
            self.open_bounds.get(old.partition, {}).pop(state.channel_id, None)
        view = self.views[state.channel_id] = ChannelView.of(state)
        self.by_partition.setdefault(state.partition, {})[state.channel_id] = view
        bounds = self.open_bounds.setdefault(state.partition, {})
        if state.windows:
            bounds[state.channel_id] = state.closed_through_ms
        else:
            bounds.pop(state.channel_id, None)
        return view

    def add_stored(self, state: ChannelState) -> bool:
        """Add a state read from the tables, unless the fold already holds a view of its livestream (then False).

        The fold's own view is never older than the table: a batch updates the view when it is folded and writes
        the table only after its outputs are acknowledged, so a table read in between (a resync after an
        assignment) is one batch behind. Taking it would leave a livestream that then goes quiet with an open
        window in the bounds for good, and campaign progress stuck behind it.
        """
        if state.channel_id in self.views:
            return False
        self.update(state)
        return True

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.by_partition.pop(partition, None)
            self.open_bounds.pop(partition, None)
        gone = set(partitions)
        for channel_id in [c for c, v in self.views.items() if v.partition in gone]:
            del self.views[channel_id]


class BatchFold:
    """The fold of events records into livestream states, batch after batch (see the module docstring).

    Kept between batches, for owned partitions only (:meth:`forget` drops a partition): the partition clocks
    (:mod:`stream.clock`), the wall time of each partition's newest record, the compact views of owned
    livestreams (:class:`PartitionIndex`), dedup minutes already read and the campaign progress last reported.
    """

    def __init__(self, config: FoldConfig) -> None:
        self.config = config
        self.clocks = PartitionClocks(config.max_clock_lead_ms)
        self.index = PartitionIndex()
        self.source_wall: dict[SourceKey, int] = {}
        """Per (partition, source): Kafka append time of the newest livestream record from that source."""
        self.source_ticks: dict[SourceKey, tuple[int, int]] = {}
        """Per (partition, source): the newest tick of that source seen here (wall time, healthy since)."""
        self.progress_sent: dict[int, tuple[int, bool]] = {}
        self.id_cache: dict[tuple[str, int], IdBucket] = {}
        self._homes: dict[bytes, int] = {}

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop what is kept for partitions no longer owned (their next owner loads it from the tables)."""
        partitions = set(partitions)
        self.index.forget(partitions)
        self.id_cache.clear()
        for partition in partitions:
            self.clocks.forget(partition)
            self.progress_sent.pop(partition, None)
        for table in (self.source_wall, self.source_ticks):
            for key in [key for key in table if key[0] in partitions]:
                del table[key]

    def home_partition(self, key: bytes) -> int:
        found = self._homes.get(key)
        if found is None:
            if len(self._homes) > KEY_CACHE_SIZE:
                self._homes.clear()
            found = self._homes[key] = self.config.home_partition(key)
        return found

    def fold(self, records: Iterable[SourceRecord], store: FoldStore, now_ms: int) -> BatchOutput:
        """Fold ``records`` (each partition's in offset order, none twice) and say what the batch must do.

        ``now_ms`` is the wall time the batch runs at (only the accepted event-time range depends on it).
        """
        return _Batch(self, store, now_ms).run(records)

    def progress(self, partitions: Iterable[int]) -> list[campaign.PartitionProgress]:
        """How far each of ``partitions`` has settled for the campaign aggregator, where it changed (always while it
        is idle: the marker's ``as_of`` moves on).

        Call only once the index holds every owned livestream: before that a livestream with an open window could
        be missing from its bounds and the progress would run ahead of it. Each source of a partition is judged by
        its own records and ticks: a source is idle when its last tick found no record from it for the idle
        timeout (and since the ticking worker's Kafka connection was last healthy); the partition's watermark is
        the lowest of its active sources' clocks, so a source whose copies are still on their way holds the
        partition back, and the partition is idle when every source is. Every partition of the topic counts as a
        source, holding the progress back until its first tick arrives here.
        """
        spec = self.config.spec
        markers = []
        for partition in sorted(partitions):
            # Every partition of the topic is a source of this one (its records for livestreams homed here, and its
            # ticks, arrive as copies). A source holds the progress back by its clock until its first tick arrives
            # (before that, records of its backlog may still be on their way); from then on it is idle when its
            # last tick found no record from it for the idle timeout, or none at all.
            sources = set(range(self.config.partitions)) | {s for (at, s) in self.source_wall if at == partition}
            marks, as_of = [], -1
            for source in sorted(sources):
                key = (partition, source)
                last_record = self.source_wall.get(key)
                tick = self.source_ticks.get(key)
                if tick is not None and (
                    last_record is None or quiet_ms(tick[0], last_record, tick[1]) >= spec.idle_timeout_ms
                ):
                    as_of = max(as_of, tick[0])
                    continue
                clock = self.clocks.clock(key)
                marks.append(clock - spec.lateness_ms if clock >= 0 else -1)
                as_of = max(as_of, last_record if last_record is not None else -1)
            idle = not marks
            bounds = self.index.open_bounds.get(partition, {})
            settled = campaign.settled_through(bounds, min(marks, default=-1), spec.size_ms, spec.grace_ms, idle)
            if self.progress_sent.get(partition) == (settled, idle) and not idle:
                continue
            markers.append(campaign.PartitionProgress(partition, settled, idle, as_of))
            self.progress_sent[partition] = (settled, idle)
        return markers


def source_of(state: ChannelState) -> int:
    """The source a livestream is judged by (its state partition for states written before sources were kept)."""
    return state.source if state.source >= 0 else state.partition


class _Batch:
    """One call of :meth:`BatchFold.fold`: the states read so far and what the batch produced."""

    def __init__(self, fold: BatchFold, store: FoldStore, now_ms: int) -> None:
        config = fold.config
        self.fold, self.store, self.config, self.spec, self.rules = fold, store, config, config.spec, config.rules
        self.bounds = TimeBounds(now_ms - config.max_past_ms, now_ms + config.max_future_ms)
        self.now_ms = now_ms
        self.effects = FoldEffects(gap_ms=stream_down_gap_ms(config.rules))
        self.touched: dict[str, ChannelState] = {}
        self.totals_before: dict[str, Counters] = {}
        """Stream-to-date counters of each touched livestream as the batch found them."""
        self.out = BatchOutput()
        self.partition = 0  # the partition of the record being folded: where its dedup and order rows live
        if len(fold.id_cache) > ID_CACHE_BUCKETS:
            fold.id_cache.clear()
        self.ids = IdRows(lambda c, b, p: store.id_row(c, b, p, self.partition), fold.id_cache)
        self.orders = OrderBook(lambda c, o: store.order_row(c, o, self.partition), config.order_horizon_ms)

    def run(self, records: Iterable[SourceRecord]) -> BatchOutput:
        for record in records:
            self.record(record)
        return self.finish()

    def state(self, channel_id: str, partition: int) -> ChannelState:
        found = self.touched.get(channel_id)
        if found is None:
            stored = self.store.state(channel_id, partition)
            found = self.touched[channel_id] = stored or ChannelState(channel_id=channel_id)
            self.totals_before[channel_id] = msgspec.structs.replace(found.totals)
        return found

    def record(self, record: SourceRecord) -> None:
        out, partition, key = self.out, record.partition, record.key
        headers = record.headers
        if headers:  # a copy, a tick, or a producer's own headers
            source, _, appended_ms = origin(record)
            if source != partition and not 0 <= source < self.config.partitions:
                # A header naming no partition of the topic (forged): no tick would ever come from that source, so
                # the record would hold its livestream's idle close and its partition's campaign progress back.
                source, appended_ms = partition, record.timestamp
            ticked = is_tick(headers)
        else:
            source, appended_ms, ticked = partition, record.timestamp, False
        if ticked:
            # A tick's time is the earliest of when it was written (its value), when Kafka appended it (the
            # original's append time, for a copy) and when the batch runs: a tick that waited in transit (a broker
            # that stood still) is not newer than the records produced meanwhile, and a tick record claiming a later
            # time (a crafted one, a clock ahead) closes nothing that a tick of the worker's own could not close now.
            # Early is safe: silence is then underestimated, never overestimated.
            tick = decode_tick(record.value)
            tick_ms = min(appended_ms, self.now_ms)
            if tick.wall_ms >= 0:
                tick_ms = min(tick_ms, tick.wall_ms)
            healthy_since = min(tick.healthy_since_ms, tick_ms)
            out.counters.ticks += 1
            self.fold.source_ticks[(partition, source)] = (tick_ms, healthy_since)
            self.scan(partition, source, tick_ms, healthy_since)
            if source == partition:
                # Copied behind every record forwarded from here so far: at each other partition it says how far
                # this source has been delivered (its livestreams there are judged by it, see scan).
                for other in range(self.config.partitions):
                    if other != partition:
                        out.forward(record, other)
            return
        if key is not None:
            home = self.fold.home_partition(key)
            if home != partition:
                out.counters.misrouted_records += 1
                value = record.value
                if value is not None and len(value) > MAX_RECORD_BYTES:
                    # Dead-lettered here, naming this record: a copy could not be produced, nor read at home.
                    out.counters.records += 1
                    letter = DeadLetter("oversized", f"record value is {len(value)} bytes, limit {MAX_RECORD_BYTES}")
                    out.dead_letters.append(DeadRecord(record, letter))
                    return
                out.forward(record, home)
                return
        out.counters.records += 1
        produced_ms = appended_ms
        self.fold.source_wall[(partition, source)] = produced_ms
        result = decode_record(key, record.value, self.bounds)
        if isinstance(result, DeadLetter):
            out.dead_letters.append(DeadRecord(record, result))
            return
        for rejected in result.rejected:
            letter = DeadLetter(rejected.reason, rejected.message)
            out.dead_letters.append(DeadRecord(record, letter, rejected.index, rejected.raw))
        if not result.events:
            return
        channel_id = result.channel_id
        state = self.state(channel_id, partition)
        self.partition = partition
        effects = self.effects
        gaps_before = len(effects.gaps)
        applied = apply_record(
            state, result.events, partition, record.offset, self.spec, effects, produced_ms, self.ids, self.orders
        )
        if not applied:
            return
        state.source = source
        # Everything a record decides is decided at its position in the partition, never per batch: windows its
        # livestream's watermark passed, a silence it ends, and the checks of a partition clock it moves.
        self.close(state, watermark(state, self.spec), partition)
        for gap in effects.gaps[gaps_before:]:
            out.alert_changes.extend((c, partition) for c in evaluate_gap(state, gap, self.rules))
        if state.alerts:
            back = resolve_if_active(state, self.rules)
            if back is not None:
                out.alert_changes.append((back, partition))
        contribution = min(state.max_ts_ms, produced_ms + self.config.max_clock_lead_ms)
        if self.fold.clocks.advance((partition, source), channel_id, contribution):
            self.scan(partition, source, -1)

    def close(self, state: ChannelState, mark: int, partition: int) -> None:
        """Close the windows of ``state`` that watermark ``mark`` passed: final windows, their alert verdicts and,
        for 1-minute windows, the campaign aggregator's copies."""
        out, spec = self.out, self.spec
        for window in close_windows(state, mark, spec):
            channel_id = state.channel_id
            closed = ClosedWindow(channel_id, state.campaign, window.start_ms, window.size_ms, window.counters)
            out.finals.append((closed, partition))
            one_minute = window.size_ms == spec.size_ms
            out.alert_changes.extend(
                (c, partition) for c in evaluate_closed_window(state, window, self.rules, one_minute)
            )
            if one_minute:
                out.campaign_copies.append(
                    campaign.ChannelWindowCopy(channel_id, state.campaign, window.start_ms, window.counters)
                )

    def scan(self, partition: int, source: int, tick_ms: int, healthy_since_ms: int = -1) -> None:
        """The partition-level checks for the livestreams of ``partition`` whose records come from ``source``, at
        one record's position: ended livestreams whose last windows can close (:func:`stream.state.ended_watermark`),
        ``stream_down`` (:func:`stream.alerts.evaluate_silence`) and, at an idle tick of that source (``tick_ms`` >=
        0), idle livestreams whose windows close (:func:`stream.state.idle_watermark`).

        A source's records and ticks reach the partition in the source's order, whatever arrives from other sources
        in between, so judging each livestream by its own source's clock and ticks gives one answer for any
        interleaving of sources (and any partitioner of the producers).

        At a tick a livestream's own clock also runs on with the wall time since its last record: the tick is
        processed after every record produced before it. Wall-clock silence is counted from the ticking worker's
        ``healthy_since_ms`` at the earliest (:class:`stream.clock.TickHealth`): a Kafka outage is not silence.
        """
        rules, spec, clocks = self.rules, self.spec, self.fold.clocks
        rule = rules.stream_down
        silence_ms, grace_ms = (rule.silence_s + rule.skew_s) * 1000, spec.grace_ms
        key = (partition, source)
        clock = clocks.clock(key)
        silence_clock = clocks.silence_clock(key)
        clocks.scanned(key)
        candidates: dict[str, ChannelView | ChannelState] = {
            cid: state
            for cid, state in self.touched.items()
            if state.partition == partition and source_of(state) == source
        }
        for channel_id, view in self.fold.index.by_partition.get(partition, {}).items():
            if channel_id not in candidates and view.source == source:
                candidates[channel_id] = view
        for channel_id, item in candidates.items():
            open_windows = len(item.windows) if isinstance(item, ChannelState) else item.open_windows
            quiet = quiet_ms(tick_ms, item.last_wall_ms, healthy_since_ms) if tick_ms >= 0 else -1
            if open_windows and quiet >= spec.idle_timeout_ms:
                state = self.state(channel_id, partition)
                self.close(state, idle_watermark(state, spec, tick_ms), partition)
                open_windows = len(state.windows)
            if item.ended_ms >= 0:
                if open_windows and clock >= item.ended_ms + grace_ms:
                    state = self.state(channel_id, partition)
                    self.close(state, ended_watermark(state, spec, clock), partition)
                continue
            if not rule.enabled or "stream_down" in (item.alerts or ()) or item.concurrent < rule.min_viewers:
                continue
            own_clock = silence_clock
            if quiet >= 0 and item.last_wall_ms >= 0:
                own_clock = max(own_clock, item.max_ts_ms + quiet)
            if own_clock - item.max_ts_ms < silence_ms:
                continue
            change = evaluate_silence(self.state(channel_id, partition), own_clock, rules)
            if change is not None:
                self.out.alert_changes.append((change, partition))

    def finish(self) -> BatchOutput:
        out, effects, ids, orders, touched = self.out, self.effects, self.ids, self.orders, self.touched
        out.id_writes = [(key, ids.rows[key], touched[key[0]].partition) for key in sorted(ids.changed)]
        out.id_deletes = [(key, touched[key[0]].partition) for key in sorted(ids.dropped)]
        out.order_writes = [(key, orders.rows[key], touched[key[0]].partition) for key in sorted(orders.changed)]
        decided = {closed.channel_id for closed, _ in out.finals} | {c.channel_id for c, _ in out.alert_changes}
        index = self.fold.index
        for channel_id, state in touched.items():
            if channel_id in effects.touched or channel_id in decided or channel_id not in index.views:
                out.states.append(state)
                index.update(state)
        out.viewers = effects.viewers
        out.late = effects.late
        counters = out.counters
        applied, before = counters.applied, self.totals_before
        for channel_id in effects.touched:
            changed = touched.get(channel_id)
            if changed is not None:
                applied.merge(changed.totals)
                applied.subtract(before[channel_id])
        counters.applied_events = effects.applied_events
        counters.redelivered_records = effects.redelivered_records
        counters.duplicate_events = effects.duplicate_events
        counters.duplicate_orders = effects.duplicate_orders
        return out
