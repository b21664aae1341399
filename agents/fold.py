"""The processing agent: ``<namespace>.events`` -> per-livestream state (RocksDB table) and the live snapshot.

Records arrive in chunks (one per partition and fetch, ``agents/bulk_consumer.py``) and are processed in
batches of up to ``batch_max_records`` records, under the revocation fence of :class:`ChunkProcessor`:

1. every record is checked against its partition's cursor (the last offset processed there, kept in a table):
   records at or below it are skipped, a jump past it is filled by reading the missing records from Kafka;
2. a record on a partition other than the one its key maps to (murmur2, as the Java client and aiokafka place
   keys) is forwarded to the right partition, where its livestream's state lives, and counted;
3. the record is decoded (bad records, and bad events inside envelopes, go to the dead-letter topic) and folded
   into its livestream's state, read from the table once per batch; after each record the livestream's windows
   that its own watermark has passed are closed at once, so lateness never depends on how records were batched;
4. final windows, alert transitions and campaign copies are produced and *acknowledged by Kafka*; windows found
   already emitted (a crash between emitting and saving) are not sent again;
5. each touched state is written to the table once, the live snapshot updated, with no ``await`` in between.

Offsets are committed by the processor after the producer (changelog included) was flushed, so a committed
offset never runs ahead of the state it produced; on revocation the batch in progress finishes first.

Idle ticks: every ``idle_tick_s`` the worker appends a tick record (header ``livestream-tick``) to each events
partition it owns. A tick runs the idle check for that partition's livestreams inside the ordinary ordered path,
so closing the last windows of a finished stream needs no second writer of the table. A tick carries the time since
which the worker's Kafka connection has been healthy, and silence is counted from it at the earliest: after a broker
outage no livestream is idle, or silent, before the producers had the idle timeout to come back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import faust
import msgspec
from aiokafka.partitioner import murmur2
from faust.types import TP

from agents.bulk_consumer import Chunk, ChunkProcessor, install, start_supervised
from agents.dlq import send_dead_letter
from agents.emitted import AlertIndex, EmittedIndex
from agents.freeze import GUARD
from agents.startup import shorten_fetch_wait
from agents.table_context import PartitionContext, PartitionedTable
from agents.topic_reader import read_range
from schemas.alerts import AlertRecord
from schemas.stats import WindowStats
from stream import campaign
from stream.alerts import (
    AlertChange,
    evaluate_closed_window,
    evaluate_gap,
    evaluate_silence,
    load_rules,
    resolve_if_active,
    stream_down_gap_ms,
)
from stream.clock import PartitionClocks, TickHealth, quiet_ms
from stream.decode import DeadLetter, TimeBounds, decode_record
from stream.settings import Settings
from stream.snapshot import ChannelView, ClosedWindow, LiveSnapshot
from stream.state import (
    ChannelState,
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

log = logging.getLogger(__name__)
TICK_HEADER = "livestream-tick"
"""Header that marks an idle-tick record (its key is the partition number; never a livestream's record)."""


class _Tick(msgspec.Struct):
    healthy_since_ms: int = -1


_tick_decoder = msgspec.json.Decoder(_Tick)


def tick_healthy_since(value: bytes | None) -> int:
    """The ``healthy_since_ms`` a tick record carries (-1 when absent or unreadable: no floor)."""
    try:
        return _tick_decoder.decode(value or b"{}").healthy_since_ms
    except (msgspec.DecodeError, UnicodeDecodeError):
        return -1


FORWARDED_HEADER = "livestream-forwarded-from"
CURSOR_KEY = b"\x00cursor"
"""Key of a partition's cursor row in the event-ids table (id rows are ``channel|bucket``)."""
_stats_encoder = msgspec.json.Encoder()
ID_CACHE_BUCKETS = 20_000
"""Dedup minutes kept in memory across batches (cleared when exceeded; a few hundred bytes to a few MB each)."""
_id_encoder = msgspec.msgpack.Encoder()
_id_decoder = msgspec.msgpack.Decoder(dict[str, int])


def id_row_key(channel_id: str, bucket: int, part: int) -> bytes:
    """Key of one part of a livestream's dedup row for one event-time minute. Bucket and part are integers and
    come first, so the key is unambiguous for any livestream id (and never the partition's cursor key)."""
    return f"{bucket}|{part}|{channel_id}".encode()


def order_row_key(channel_id: str, order_id: str) -> bytes:
    """Key of an order's row: msgpack of the pair, unambiguous for any ids."""
    return _id_encoder.encode((channel_id, order_id))


def raw_bytes() -> faust.Schema:
    """A bytes-in, bytes-out schema. Each topic and table needs its own instance: a Schema shared between the
    events topic and a table made faust 0.15.3 acknowledge the topic's records without delivering them."""
    return faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


def raw_table(app: faust.App, name: str, partitions: int, help_text: str, settings: Settings) -> Any:
    """A RocksDB-backed table of raw bytes (key and value types must be set on the Table itself).

    RocksDB buffers are sized for a worker's share of a fair, not faust's server defaults (64 MB memtables, three
    of them, and a 2 GB block cache per table partition), which would let a worker grow to gigabytes.
    """
    return app.Table(
        name,
        default=None,
        partitions=partitions,
        help=help_text,
        key_type=bytes,
        value_type=bytes,
        schema=raw_bytes(),
        # Compaction only works on closed segments: small segments let the changelog be compacted during a fair,
        # so a takeover replays the latest value per key, not every write since the start.
        extra_topic_configs={
            "segment.bytes": str(settings.changelog_segment_mb * 1024 * 1024),
            "segment.ms": str(10 * 60 * 1000),
            "min.cleanable.dirty.ratio": "0.1",
        },
        options={
            "write_buffer_size": settings.rocksdb_write_buffer_mb * 1024 * 1024,
            "max_write_buffer_number": 2,
            "target_file_size_base": 16 * 1024 * 1024,
            "block_cache_size": settings.rocksdb_block_cache_mb * 1024 * 1024,
        },
    )


def window_spec(settings: Settings) -> WindowSpec:
    return WindowSpec(
        size_ms=settings.window_size_s * 1000,
        grace_ms=settings.window_grace_s * 1000,
        lateness_ms=settings.allowed_lateness_s * 1000,
        hop_windows=settings.hop_windows,
        dedup_horizon_ms=settings.dedup_horizon_s * 1000,
        idle_timeout_ms=int(settings.idle_timeout_s * 1000),
    )


class Fold(ChunkProcessor):
    """The events processor: topics, the state table, the emitted-window index, the live snapshot."""

    def __init__(self, app: faust.App, settings: Settings, live: LiveSnapshot) -> None:
        super().__init__(
            app,
            settings.events_topic,
            max_buffered=settings.max_buffered_records,
            batch_max_records=settings.batch_max_records,
            commit_interval_s=settings.commit_interval_s,
        )
        self.settings = settings
        self.live = live
        self.spec = window_spec(settings)
        parts = settings.partitions
        self.events_topic = app.topic(settings.events_topic, partitions=parts, schema=raw_bytes(), acks=False)
        self.dlq_topic = app.topic(settings.dlq_topic, partitions=1, schema=raw_bytes())
        self.late_topic = app.topic(settings.late_topic, partitions=1, schema=raw_bytes())
        self.stats_topics = {
            self.spec.size_ms: app.topic(settings.stats_1m_topic, partitions=parts, schema=raw_bytes()),
            self.spec.size_ms * self.spec.hop_windows: app.topic(
                settings.stats_hop_topic, partitions=parts, schema=raw_bytes()
            ),
        }
        self.table = raw_table(app, "channel-state", parts, "ChannelState per livestream", settings)
        self.states = PartitionedTable(self.table)
        self.ids_table = raw_table(
            app, "event-ids", parts, "applied event ids per livestream and event-time minute (retry dedup)", settings
        )
        self.id_rows = PartitionedTable(self.ids_table)
        self.orders_table = raw_table(
            app, "orders", parts, "counted statuses per (livestream, order id) within the order horizon", settings
        )
        self.order_rows = PartitionedTable(self.orders_table)
        # The offset of the last events record processed per partition lives in the same table, in its partition,
        # under a key no livestream can have (one RocksDB per table partition is memory; a table of 4 keys is waste).
        self.cursor_rows = self.id_rows
        self.cursors = self.processed
        self.contexts = {p: PartitionContext(settings.events_topic, p) for p in range(parts)}
        self.emitted = EmittedIndex(
            settings.kafka_client_options(), [settings.stats_1m_topic, settings.stats_hop_topic]
        )
        self.rules = load_rules(settings.alert_rules)
        self.alerts_topic = app.topic(settings.alerts_topic, partitions=parts, schema=raw_bytes())
        self.alert_index = AlertIndex(settings.kafka_client_options(), settings.alerts_topic)
        self.campaign_topic = app.topic(settings.campaign_input_topic, partitions=1, schema=raw_bytes())
        self.clocks = PartitionClocks(settings.max_clock_lead_s * 1000)
        """Event-time clocks of owned events partitions (:mod:`stream.clock`)."""
        self.progress_sent: dict[int, tuple[int, bool]] = {}
        self.partition_wall: dict[int, int] = {}
        self.tick_health = TickHealth(
            healthy_since_ms=int(time.time() * 1000), outage_after_ms=int(max(settings.idle_tick_s, 5.0) * 1000)
        )
        self.tick_sends: list[Any] = []
        """Wall-clock (Kafka) timestamp of the newest record applied per partition (campaign idleness)."""
        self.key_partitions: dict[bytes, int] = {}
        """Partition each record key maps to (murmur2), cached."""
        self.id_cache: dict[tuple[str, int], IdBucket] = {}
        """Dedup minutes read from the table, kept across batches while the partitions stay owned."""

    def forget(self, partitions: set[int]) -> None:
        super().forget(partitions)
        self.live.drop_partitions(partitions)
        self.id_cache.clear()
        for partition in partitions:
            self.clocks.forget(partition)
            self.progress_sent.pop(partition, None)
            self.partition_wall.pop(partition, None)
        self.emitted.forget(partitions)
        self.alert_index.forget(partitions)

    def home_partition(self, key: bytes) -> int:
        """The partition a key belongs on: murmur2 of the key, as the Java client's and aiokafka's partitioners."""
        found = self.key_partitions.get(key)
        if found is None:
            if len(self.key_partitions) > 200_000:
                self.key_partitions.clear()
            found = self.key_partitions[key] = (murmur2(key) & 0x7FFFFFFF) % self.settings.partitions
        return found

    async def process_chunks(self, chunks: list[Chunk]) -> None:
        settings, live, spec = self.settings, self.live, self.spec
        batch_partitions = {chunk.partition for chunk in chunks}
        if not batch_partitions <= self.emitted.loaded or not batch_partitions <= self.alert_index.loaded:
            # Read back every owned partition at once (records of the others are usually next).
            owned = set(self.owned) | batch_partitions
            await asyncio.gather(self.emitted.load(owned), self.alert_index.load(owned))
        now_ms = int(time.time() * 1000)
        bounds = TimeBounds(now_ms - settings.max_past_days * 86_400_000, now_ms + settings.max_future_s * 1000)
        effects = FoldEffects(gap_ms=stream_down_gap_ms(self.rules))
        touched: dict[str, ChannelState] = {}
        ticks: dict[int, tuple[int, int]] = {}  # per partition: the last tick's (wall time, healthy since)
        tick_records = [0]
        contexts = self.contexts
        current = [0]  # the partition of the record being folded: the id rows' partition

        def load_ids(channel_id: str, bucket: int, part: int) -> IdRow:
            stored = self.id_rows.get(id_row_key(channel_id, bucket, part), contexts[current[0]])
            return _id_decoder.decode(stored) if stored is not None else {}

        if len(self.id_cache) > ID_CACHE_BUCKETS:
            self.id_cache.clear()
        ids = IdRows(load_ids, self.id_cache)

        def load_order(channel_id: str, order_id: str) -> OrderRow:
            stored = self.order_rows.get(order_row_key(channel_id, order_id), contexts[current[0]])
            return _id_decoder.decode(stored) if stored is not None else {}

        orders = OrderBook(load_order, settings.order_horizon_s * 1000)
        dead: list[tuple[Any, DeadLetter, int | None, bytes | None]] = []
        forward: list[Any] = []
        changes: list[tuple[AlertChange, int]] = []
        finals: list[tuple[ClosedWindow, int]] = []
        copies: list[campaign.ChannelWindowCopy] = []
        partition_wall = self.partition_wall
        rules = self.rules
        clocks = self.clocks
        lead_ms = settings.max_clock_lead_s * 1000
        home = self.home_partition
        records_seen = 0

        def close(state: ChannelState, mark: int, partition: int) -> None:
            for window in close_windows(state, mark, spec):
                channel_id = state.channel_id
                closed = ClosedWindow(channel_id, state.campaign, window.start_ms, window.size_ms, window.counters)
                finals.append((closed, partition))
                one_minute = window.size_ms == spec.size_ms
                changes.extend((c, partition) for c in evaluate_closed_window(state, window, self.rules, one_minute))
                if one_minute:
                    copies.append(
                        campaign.ChannelWindowCopy(channel_id, state.campaign, window.start_ms, window.counters)
                    )

        def scan(partition: int, tick_ms: int, healthy_since_ms: int = -1) -> None:
            changes.extend(self._scan_partition(partition, tick_ms, touched, close, healthy_since_ms))

        def fold_record(record: Any, partition: int) -> None:
            key, value, headers = record.key, record.value, record.headers
            if headers and any(name == TICK_HEADER for name, _ in headers):
                healthy_since = tick_healthy_since(value)
                ticks[partition] = (record.timestamp, healthy_since)
                tick_records[0] += 1
                scan(partition, record.timestamp, healthy_since)
                return
            if key is not None and home(key) != partition:
                forward.append(record)
                return
            produced_ms = record.timestamp
            partition_wall[partition] = produced_ms
            result = decode_record(key, value, bounds)
            if isinstance(result, DeadLetter):
                dead.append((record, result, None, None))
                return
            for rejected in result.rejected:
                dead.append((record, DeadLetter(rejected.reason, rejected.message), rejected.index, rejected.raw))
            if not result.events:
                return
            channel_id = result.channel_id
            state = touched.get(channel_id)
            if state is None:
                state = touched[channel_id] = self._state(channel_id, partition)
            current[0] = partition
            gaps_before = len(effects.gaps)
            if not apply_record(
                state, result.events, partition, record.offset, spec, effects, produced_ms, ids, orders
            ):
                return
            # Everything a record decides is decided at its position in the partition, never per batch: windows
            # its livestream's watermark passed, a silence it ends, and the checks of a partition clock it moves.
            close(state, watermark(state, spec), partition)
            for gap in effects.gaps[gaps_before:]:
                changes.extend((c, partition) for c in evaluate_gap(state, gap, rules))
            if state.alerts:
                back = resolve_if_active(state, rules)
                if back is not None:
                    changes.append((back, partition))
            if clocks.advance(partition, channel_id, min(state.max_ts_ms, produced_ms + lead_ms)):
                scan(partition, -1)

        cursors = self.cursors
        for chunk in chunks:
            partition = chunk.partition
            cursor = cursors.get(partition)
            for record in chunk.records:
                offset = record.offset
                if cursor is None or offset != cursor + 1:
                    if cursor is not None and offset <= cursor:
                        continue  # fetched again after a seek back to the committed offset: already processed
                    missed = await self._missing(partition, offset)
                    for earlier in missed:
                        fold_record(earlier, partition)
                    records_seen += len(missed)
                    cursor = cursors[partition]
                    if offset <= cursor:
                        continue
                cursors[partition] = cursor = offset
                records_seen += 1
                fold_record(record, partition)

        GUARD.check()  # from here on: side effects (see agents/freeze.py)
        for record, letter, index, raw in dead:
            live.dead_letters[letter.reason] += 1
            where = f"{settings.events_topic}[{record.partition}]@{record.offset}"
            if index is not None:
                where += f" event #{index}"
            log.warning("dead letter %s at %s: %s", letter.reason, where, letter.message)
            await send_dead_letter(self.dlq_topic, record, settings.events_topic, letter, index, raw)
        if forward:
            await self._forward(forward)

        # Final windows, alert transitions and campaign copies: sent together, then wait until Kafka has them all
        # (before the state that marks them done is saved).
        pending = await self._emit(finals, now_ms)
        pending += await self._emit_alerts(changes, now_ms)
        pending += await self._send_copies(copies)
        if pending:
            await asyncio.gather(*pending)

        GUARD.check()
        # Every state change and live-snapshot update together, with no await in between (the Redis mirror must
        # never see a channel's new state without its viewer ids).
        now_s = time.time()
        for partition in batch_partitions:
            cursor = cursors.get(partition)
            if cursor is None:
                continue
            self.cursor_rows.set(CURSOR_KEY, str(cursor).encode(), contexts[partition])
            live.progress_at_s[partition] = now_s
            try:
                highwater = self.app.consumer.highwater(TP(settings.events_topic, partition))
            except Exception:  # no longer assigned in the client: the revocation fence follows
                highwater = None
            if highwater is not None:
                live.lag[partition] = max(0, highwater - self.committed.get(partition, cursor + 1))
        for channel_id, bucket, part in ids.changed:
            self.id_rows.set(
                id_row_key(channel_id, bucket, part),
                _id_encoder.encode(ids.rows[(channel_id, bucket, part)]),
                contexts[touched[channel_id].partition],
            )
        for channel_id, order_id in orders.changed:
            self.order_rows.set(
                order_row_key(channel_id, order_id),
                _id_encoder.encode(orders.rows[(channel_id, order_id)]),
                contexts[touched[channel_id].partition],
            )
        for channel_id, bucket, part in ids.dropped:
            self.id_rows.delete(id_row_key(channel_id, bucket, part), contexts[touched[channel_id].partition])
        closed_channels = {closed.channel_id for closed, _ in finals} | {c.channel_id for c, _ in changes}
        for channel_id, state in touched.items():
            if channel_id in effects.touched or channel_id in closed_channels or channel_id not in live.channels:
                self.states.set(channel_id.encode(), encode_state(state), contexts[state.partition])
                live.update(state)
        live.add_viewers(effects.viewers)
        live.pending_closed.extend(closed for closed, _ in finals)
        live.windows_closed += len(finals)
        live.records_processed += records_seen - tick_records[0]
        live.events_processed += effects.applied_events
        live.redelivered_records += effects.redelivered_records
        live.duplicate_events += effects.duplicate_events
        live.duplicate_order_updates += effects.duplicate_orders
        live.late_events += len(effects.late)
        live.misrouted_records += len(forward)
        for change, _ in changes:
            if change.status == "firing":
                live.alerts_fired[change.rule] += 1
            elif change.channel_id:
                live.resolved_at[change.alert_id] = change.at_ms
        if live.dirty or live.pending_closed:
            live.changed.set()
        for late_event in effects.late:
            await self.late_topic.send(key=late_event.channel_id.encode(), value=msgspec.json.encode(late_event))
        await self._send_progress(batch_partitions, ticks)

    async def _forward(self, records: list[Any]) -> None:
        """Records on a partition other than their key's: produce them to the right one, where the livestream's
        state lives (original key, value and headers, plus where they came from), and wait until Kafka has them.

        A crash before the source offset is committed forwards them again; the copies carry the same event ids,
        so the livestream's dedup counts them once.
        """
        pending = []
        for record in records:
            target = self.home_partition(record.key)
            log.warning(
                "record %s[%d]@%d has key %r of partition %d: forwarded",
                self.settings.events_topic,
                record.partition,
                record.offset,
                record.key[:64],
                target,
            )
            headers = [*(record.headers or ()), (FORWARDED_HEADER, f"{record.partition}@{record.offset}".encode())]
            pending.append(
                await self.events_topic.send(
                    key=record.key, value=record.value, partition=target, headers=headers, force=True
                )
            )
        await asyncio.gather(*pending)

    def _scan_partition(
        self,
        partition: int,
        tick_ms: int,
        touched: dict[str, ChannelState],
        close: Callable[[ChannelState, int, int], None],
        healthy_since_ms: int = -1,
    ) -> list[tuple[AlertChange, int]]:
        """The partition-level checks, at one record's position: ended livestreams whose last windows can close
        (:func:`stream.state.ended_watermark`), ``stream_down`` (:func:`stream.alerts.evaluate_silence`) and, at
        an idle tick (``tick_ms`` >= 0), idle livestreams whose windows close (:func:`stream.state.idle_watermark`).
        Livestreams whose state is needed are loaded into ``touched``.

        At a tick a livestream's own clock also runs on with the wall time since its last record: the tick is
        processed after every record produced before it. Wall-clock silence is counted from the ticking worker's
        ``healthy_since_ms`` at the earliest (:class:`stream.clock.TickHealth`): a Kafka outage is not silence.
        """
        rule = self.rules.stream_down
        spec, live = self.spec, self.live
        silence_ms, grace_ms = (rule.silence_s + rule.skew_s) * 1000, spec.grace_ms
        clock = self.clocks.clock(partition)
        silence_clock = self.clocks.silence_clock(partition)
        self.clocks.scanned(partition)
        candidates: dict[str, ChannelView | ChannelState] = {
            cid: state for cid, state in touched.items() if state.partition == partition
        }
        for channel_id, view in live.by_partition.get(partition, {}).items():
            if channel_id not in candidates:
                candidates[channel_id] = view
        changes: list[tuple[AlertChange, int]] = []

        def state_of(channel_id: str) -> ChannelState:
            found = touched.get(channel_id)
            if found is None:
                found = touched[channel_id] = self._state(channel_id, partition)
            return found

        for channel_id, item in candidates.items():
            open_windows = len(item.windows) if isinstance(item, ChannelState) else item.open_windows
            quiet = quiet_ms(tick_ms, item.last_wall_ms, healthy_since_ms) if tick_ms >= 0 else -1
            if open_windows and quiet >= spec.idle_timeout_ms:
                state = state_of(channel_id)
                close(state, idle_watermark(state, spec, tick_ms), partition)
                open_windows = len(state.windows)
            if item.ended_ms >= 0:
                if open_windows and clock >= item.ended_ms + grace_ms:
                    state = state_of(channel_id)
                    close(state, ended_watermark(state, spec, clock), partition)
                continue
            if not rule.enabled or "stream_down" in (item.alerts or ()) or item.concurrent < rule.min_viewers:
                continue
            own_clock = silence_clock
            if quiet >= 0 and item.last_wall_ms >= 0:
                own_clock = max(own_clock, item.max_ts_ms + quiet)
            if own_clock - item.max_ts_ms < silence_ms:
                continue
            state = state_of(channel_id)
            change = evaluate_silence(state, own_clock, self.rules)
            if change is not None:
                changes.append((change, partition))
        return changes

    async def _emit_alerts(self, changes: list[tuple[AlertChange, int]], now_ms: int) -> list[Any]:
        """Publish alert transitions not published before; returns the pending sends."""
        pending = []
        for change, partition in changes:
            if self.alert_index.already_emitted(change.alert_id, change.status):
                continue
            record = AlertRecord.from_change(change, emitted_at_ms=now_ms)
            log.info("alert %s %s: %s", change.status, change.alert_id, change.summary)
            pending.append(
                await self.alerts_topic.send(
                    key=change.alert_id.encode(), value=_stats_encoder.encode(record), partition=partition, force=True
                )
            )
            self.alert_index.mark(change.alert_id, change.status)
        return pending

    async def _send_copies(self, copies: list[campaign.ChannelWindowCopy]) -> list[Any]:
        """Final 1-minute windows to the campaign aggregator (sent again after a crash; it ignores repeats);
        returns the pending sends."""
        pending = [
            await self.campaign_topic.send(key=c.campaign.encode(), value=campaign.encode(c), partition=0, force=True)
            for c in copies
        ]
        return pending

    async def _send_progress(self, partitions: set[int], ticks: dict[int, tuple[int, int]]) -> None:
        """Tell the campaign aggregator how far each of these partitions has settled (when it changed).

        Only once the live snapshot holds every owned livestream (``ready``): before that a livestream with an open
        window could be missing from ``open_bounds`` and the progress would run ahead of it.
        """
        if not self.live.ready:
            return
        pending = []
        spec = self.spec
        for partition in sorted(partitions):
            tick = ticks.get(partition)
            tick_ms = tick[0] if tick is not None else None
            # Idle = no record for the idle timeout since the newest record, since this worker got the partition and
            # since the ticking worker's Kafka connection was last healthy.
            last_record = self.partition_wall.setdefault(partition, int(time.time() * 1000))
            idle = tick is not None and quiet_ms(tick[0], last_record, tick[1]) >= spec.idle_timeout_ms
            clock = self.clocks.clock(partition)
            mark = clock - spec.lateness_ms if clock >= 0 else -1
            bounds = self.live.open_bounds.get(partition, {})
            settled = campaign.settled_through(bounds, mark, spec.size_ms, spec.grace_ms, idle)
            as_of = tick_ms if idle and tick_ms is not None else last_record
            if self.progress_sent.get(partition) == (settled, idle) and not idle:
                continue
            marker = campaign.PartitionProgress(partition, settled, idle, as_of)
            pending.append(
                await self.campaign_topic.send(key=b"progress", value=campaign.encode(marker), partition=0, force=True)
            )
            self.progress_sent[partition] = (settled, idle)
        if pending:
            await asyncio.gather(*pending)

    async def _missing(self, partition: int, offset: int) -> list[Any]:
        """Records of ``partition`` between the last one processed and ``offset`` that never arrived (usually none).

        Every record of the events topic passes through here and the last processed offset per partition is kept
        in a table, so a jump means records were skipped (a seek past them, or a fetch dropped by the client):
        they are read straight from Kafka and folded first (records already applied are then skipped by their
        livestream's offset). The batch loop calls this only when the offset is not the next one of the in-memory
        cursor (records this process processed, which it skips); it sets that cursor to ``offset - 1``.
        """
        cursor = self.cursors.get(partition)
        if cursor is None:
            # The stored cursor only tells whether records are missing. Records at or below it are *not* skipped
            # here: after a crash the cursor row's changelog record can have been written while a state change of
            # the same batch was lost; each livestream's own offset decides what was applied.
            stored = self.cursor_rows.get(CURSOR_KEY, self.contexts[partition])
            cursor = int(stored) if stored is not None else -1
            self.cursors[partition] = offset - 1
        else:
            self.cursors[partition] = max(cursor, offset - 1)
        if offset <= cursor + 1:
            return []
        # A partition never processed here (no cursor) that does not start at the beginning is read from the
        # beginning (records its livestreams already applied are skipped by their own offsets).
        topic = self.settings.events_topic
        missed = await read_range(self.settings.kafka_client_options(), topic, partition, cursor + 1, offset)
        if not missed:
            return []
        log.warning("offset gap on %s[%d]: re-read %d records from %d", topic, partition, len(missed), cursor + 1)
        self.live.offset_gaps += 1
        return missed

    def _state(self, channel_id: str, partition: int) -> ChannelState:
        stored = self.states.get(channel_id.encode(), self.contexts[partition])
        return decode_state(stored) if stored is not None else ChannelState(channel_id=channel_id)

    async def _emit(self, finals: list[tuple[ClosedWindow, int]], now_ms: int) -> list[Any]:
        """Produce final window records not emitted before; returns the pending sends."""
        pending = []
        for closed, partition in finals:
            if self.emitted.already_emitted(closed.channel_id, closed.size_ms, closed.start_ms):
                self.live.duplicate_windows_suppressed += 1
                continue
            record = WindowStats.from_closed(closed, emitted_at_ms=now_ms)
            pending.append(
                await self.stats_topics[closed.size_ms].send(
                    key=f"{closed.channel_id}|{closed.start_ms}".encode(),
                    value=_stats_encoder.encode(record),
                    partition=partition,
                    force=True,  # publish now: faust would otherwise attach it to the event and send it on ack
                )
            )
            self.emitted.mark(closed.channel_id, closed.size_ms, closed.start_ms)
        return pending

    async def send_ticks(self) -> None:
        """Append an idle-tick record to every owned events partition (see the module docstring), unless the
        previous round is not acknowledged yet (then Kafka is slow or away: :class:`stream.clock.TickHealth`)."""
        now_ms = int(time.time() * 1000)
        previous = self.tick_sends
        done = all(f.done() for f in previous)
        failed = done and any(f.cancelled() or f.exception() is not None for f in previous)
        if not self.tick_health.may_send(now_ms, done, failed):
            return
        self.tick_health.sent(now_ms)
        value = msgspec.json.encode(
            {"type": "tick", "wall_ms": now_ms, "healthy_since_ms": self.tick_health.healthy_since_ms}
        )
        sends = []
        for partition in sorted(self.owned):
            sends.append(
                await self.events_topic.send(
                    key=str(partition).encode(), value=value, partition=partition, headers=[(TICK_HEADER, b"1")]
                )
            )
        self.tick_sends = sends


def register(app: faust.App, settings: Settings, live: LiveSnapshot) -> Fold:
    fold = Fold(app, settings, live)
    install(app, fold, fold.events_topic)

    start_supervised(app, fold, live, "fold-events")

    @app.timer(settings.idle_tick_s, name="idle-ticks")
    async def idle_ticks() -> None:
        if not app.rebalancing:
            await fold.send_ticks()

    @app.timer(1.0, name="partition-lag")
    async def refresh_lag() -> None:
        """Lag and progress of owned partitions, apart from processing: if the loop stops, lag stays and the
        partition's last progress ages, so readiness and ``livestream_partition_stalled`` see it."""
        now_s = time.time()
        for partition in list(fold.owned):
            cursor = fold.cursors.get(partition)
            if cursor is None:
                continue
            try:
                highwater = app.consumer.highwater(TP(settings.events_topic, partition))
            except Exception:
                continue
            if highwater is None:
                continue
            # Lag is the group's committed offset against the end (what a restart would have to redo); progress is
            # measured against what was processed.
            live.lag[partition] = max(0, highwater - fold.committed.get(partition, cursor + 1))
            if highwater - cursor - 1 <= 0:
                live.progress_at_s[partition] = now_s

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def not_ready_while_rebalancing(sender: Any, revoked: set[Any], **_: Any) -> None:
        live.ready = False

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def own_assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
        partitions = {tp.partition for tp in assigned if tp.topic == settings.events_topic}
        live.owned_partitions = set(partitions)
        now_s = time.time()
        for partition in partitions:
            live.progress_at_s[partition] = now_s
        live.resync_pending = True
        shorten_fetch_wait(app, settings.consumer_fetch_wait_ms)

    @app.timer(1.0, name="resync-live-snapshot")
    async def resync_live_snapshot() -> None:
        """After an assignment and table recovery, load every owned state into the live snapshot (and so Redis).

        Redis may have missed the last flush of the previous owner; records that are redelivered are skipped and
        would not mark their channel dirty, so the new owner re-mirrors everything it owns once.
        """
        recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        if not live.resync_pending or app.rebalancing or app.in_recovery or not recovered:
            return
        live.resync_pending = False
        for _key, value in fold.table.items():
            live.update(decode_state(value))
        live.ready = True

    return fold
