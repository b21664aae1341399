"""The processing agent: ``<namespace>.events`` -> per-livestream state (RocksDB tables) and the live snapshot.

Records arrive in chunks (one per partition and fetch, ``agents/bulk_consumer.py``) and are processed in
batches of up to ``batch_max_records`` records, under the revocation fence of :class:`ChunkProcessor`. What a
batch *does* is decided by the pure :class:`stream.fold.BatchFold`; this module is the I/O around it, in the order
:meth:`Fold.process_chunks` states:

1. **read**: each record is checked against its partition's cursor (the last offset processed there, kept in a
   table): records at or below it are skipped, a jump past it is filled by reading the missing records from Kafka;
2. **fold**: one call of :meth:`stream.fold.BatchFold.fold` with the tables as its store;
3. **publish**: dead letters, forwards (records on a partition other than their key's murmur2 partition, produced
   to the right one), final windows (minus those found already emitted: a crash between emitting and saving),
   alert transitions and campaign copies, *acknowledged by Kafka*;
4. **save**: the cursor, dedup and order rows and every state the fold names are written to the tables and the
   live snapshot is updated, with no ``await`` in between;
5. late copies and campaign progress follow.

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
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import faust
import msgspec
from aiokafka.partitioner import murmur2
from faust.types import TP

from agents.bulk_consumer import Chunk, ChunkProcessor, RunBuilder, install, start_supervised
from agents.dlq import send_dead_letter
from agents.emitted import AlertIndex, EmittedIndex
from agents.forwarding import ForwardLog
from agents.freeze import GUARD
from agents.sends import Headers, send_batched
from agents.startup import shorten_fetch_wait
from agents.table_context import PartitionContext, PartitionedTable, raw_bytes, raw_table
from agents.topic_reader import stream_range
from stream import campaign
from stream.alerts import AlertChange, alert_record, load_rules
from stream.clock import TickHealth
from stream.fold import (
    FORWARDED_HEADER,
    TICK_HEADER,
    BatchFold,
    BatchOutput,
    FoldConfig,
    SourceRecord,
    encode_tick,
    forwarded_header,
    is_tick,
)
from stream.settings import Settings
from stream.snapshot import ClosedWindow, LiveSnapshot
from stream.state import ChannelState, IdRow, OrderRow, decode_state, encode_state

log = logging.getLogger(__name__)

CURSOR_KEY = b"\x00cursor"
"""Key of a partition's cursor row in the event-ids table (id rows are ``bucket|part|channel``)."""
_stats_encoder = msgspec.json.Encoder()
_id_encoder = msgspec.msgpack.Encoder()
_id_decoder = msgspec.msgpack.Decoder(dict[str, int])


def id_row_key(channel_id: str, bucket: int, part: int) -> bytes:
    """Key of one part of a livestream's dedup row for one event-time minute. Bucket and part are integers and
    come first, so the key is unambiguous for any livestream id (and never the partition's cursor key)."""
    return f"{bucket}|{part}|{channel_id}".encode()


def order_row_key(channel_id: str, order_id: str) -> bytes:
    """Key of an order's row: msgpack of the pair, unambiguous for any ids."""
    return _id_encoder.encode((channel_id, order_id))


def murmur2_partitioner(partitions: int) -> Callable[[bytes], int]:
    """The partition a key belongs on: murmur2 of the key, as the Java client's and aiokafka's partitioners."""

    def home(key: bytes) -> int:
        return int(murmur2(key) & 0x7FFFFFFF) % partitions

    return home


def _copies(records: list[SourceRecord]) -> Iterator[tuple[bytes | None, bytes | None, Headers]]:
    """Key, value and headers of each record's forwarded copy: :func:`stream.fold.forwarded_header` first, then the
    record's own headers (minus a forwarded-from header of its own: a copy names the record its producer wrote)."""
    for record in records:
        headers: Headers = [forwarded_header(record.partition, record.offset, record.timestamp)]
        own = record.headers
        if own:  # rare: producers seldom set headers (ticks have one)
            headers.extend(header for header in own if header[0] != FORWARDED_HEADER)
        yield record.key, record.value, headers


class TableStore:
    """The fold's :class:`stream.fold.FoldStore` over the worker's three tables (each key in its partition)."""

    def __init__(self, states: PartitionedTable, ids: PartitionedTable, orders: PartitionedTable, topic: str) -> None:
        self.states, self.ids, self.orders = states, ids, orders
        self.contexts: dict[int, PartitionContext] = {}
        self.topic = topic

    def context(self, partition: int) -> PartitionContext:
        found = self.contexts.get(partition)
        if found is None:
            found = self.contexts[partition] = PartitionContext(self.topic, partition)
        return found

    def state(self, channel_id: str, partition: int) -> ChannelState | None:
        stored = self.states.get(channel_id.encode(), self.context(partition))
        return decode_state(stored) if stored is not None else None

    def id_row(self, channel_id: str, bucket: int, part: int, partition: int) -> IdRow:
        stored = self.ids.get(id_row_key(channel_id, bucket, part), self.context(partition))
        return _id_decoder.decode(stored) if stored is not None else {}

    def order_row(self, channel_id: str, order_id: str, partition: int) -> OrderRow:
        stored = self.orders.get(order_row_key(channel_id, order_id), self.context(partition))
        return _id_decoder.decode(stored) if stored is not None else {}

    def save(self, output: BatchOutput) -> None:
        """Write the rows and states a batch names (no await: one step with the live snapshot's update)."""
        for (channel_id, bucket, part), row, partition in output.id_writes:
            self.ids.set(id_row_key(channel_id, bucket, part), _id_encoder.encode(row), self.context(partition))
        for (channel_id, order_id), row, partition in output.order_writes:
            self.orders.set(order_row_key(channel_id, order_id), _id_encoder.encode(row), self.context(partition))
        for (channel_id, bucket, part), partition in output.id_deletes:
            self.ids.delete(id_row_key(channel_id, bucket, part), self.context(partition))
        for state in output.states:
            self.states.set(state.channel_id.encode(), encode_state(state), self.context(state.partition))


class Fold(ChunkProcessor):
    """The events processor: topics, the tables, the emitted-window index, the pure fold and the live snapshot."""

    def __init__(self, app: faust.App, settings: Settings, live: LiveSnapshot) -> None:
        super().__init__(
            app,
            settings.events_topic,
            max_buffered=settings.max_buffered_records,
            batch_max_records=settings.batch_max_records,
            commit_interval_s=settings.commit_interval_s,
            max_buffered_bytes=settings.max_buffered_bytes,
            batch_max_bytes=settings.batch_max_bytes,
        )
        self.settings = settings
        self.live = live
        self.rules = load_rules(settings.alert_rules)
        self.core = BatchFold(FoldConfig.from_settings(settings, self.rules, murmur2_partitioner(settings.partitions)))
        self.spec = self.core.config.spec
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
        self.ids_table = raw_table(
            app, "event-ids", parts, "applied event ids per livestream and event-time minute (retry dedup)", settings
        )
        self.orders_table = raw_table(
            app, "orders", parts, "counted statuses per (livestream, order id) within the order horizon", settings
        )
        self.store = TableStore(
            PartitionedTable(self.table),
            PartitionedTable(self.ids_table),
            PartitionedTable(self.orders_table),
            settings.events_topic,
        )
        # The offset of the last events record processed per partition lives in the event-ids table, in its
        # partition, under a key no livestream can have (one RocksDB per table partition is memory).
        self.cursor_rows = self.store.ids
        self.cursors = self.processed
        self._cursor_written: dict[int, int] = {}
        """The offset last written to each partition's cursor row by this process."""
        self.emitted = EmittedIndex(
            settings.kafka_client_options(), [settings.stats_1m_topic, settings.stats_hop_topic]
        )
        self.alerts_topic = app.topic(settings.alerts_topic, partitions=parts, schema=raw_bytes())
        self.alert_index = AlertIndex(settings.kafka_client_options(), settings.alerts_topic)
        self.campaign_topic = app.topic(settings.campaign_input_topic, partitions=1, schema=raw_bytes())
        self.tick_health = TickHealth(
            healthy_since_ms=int(time.time() * 1000), outage_after_ms=int(max(settings.idle_tick_s, 5.0) * 1000)
        )
        self.tick_sends: list[Any] = []
        self.forward_log = ForwardLog(settings.events_topic)

    def forget(self, partitions: set[int]) -> None:
        super().forget(partitions)
        for partition in partitions:
            self._cursor_written.pop(partition, None)
        self.live.drop_partitions(partitions)
        self.core.forget(partitions)
        self.emitted.forget(partitions)
        self.alert_index.forget(partitions)

    async def load_owned_states(self, slice_states: int = 2_000) -> bool:
        """Every state of the owned table partitions into the live snapshot, so Redis is re-mirrored in full (it may
        hold a previous owner's older writes), and into the fold's index where the fold holds no view of it yet
        (:meth:`stream.fold.PartitionIndex.add_stored`). A batch between its fold and its save has newer states than
        the table: its save, which follows, writes them into the snapshot again. Runs in slices of
        ``slice_states`` that yield to the event loop (100,000 livestreams take seconds to decode); gives up (False)
        when a rebalance starts meanwhile (the next assignment asks for a resync again)."""
        for count, (_key, value) in enumerate(self.table.items(), start=1):
            state = decode_state(value)
            if state.partition in self.owned:
                self.core.index.add_stored(state)
                self.live.update(state)
            if count % slice_states == 0:
                await asyncio.sleep(0)
                if self.app.rebalancing:
                    return False
        return True

    async def process_chunks(self, chunks: list[Chunk]) -> None:
        """One batch, in this order: read (cursor, gaps), fold (pure), publish and wait for Kafka, save (tables and
        live snapshot together), then late copies and campaign progress. The processor commits offsets later.

        The batch goes through these steps in runs of at most the batch's bounds: records re-read to fill a gap
        come on top of the chunks and are streamed from Kafka run by run, so a gap of any length is never held
        in memory whole."""
        partitions = {chunk.partition for chunk in chunks}
        await self._load_indexes(partitions)
        async for piece in self._in_order(chunks):
            now_ms = int(time.time() * 1000)
            output = self.core.fold(piece, self.store, now_ms)
            GUARD.check()  # from here on: side effects (see agents/freeze.py)
            await self._publish(output, now_ms)
            GUARD.check()
            self._save(output, partitions, piece)
            await self._send_late(output)
            if self.live.ready:
                await self._send_progress(partitions)
        self._save_cursors(partitions)

    def _save_cursors(self, partitions: set[int]) -> None:
        """The cursor row of each partition of a finished batch: its last record processed (unless its last run
        wrote that already)."""
        for partition in partitions:
            cursor = self.cursors.get(partition)
            if cursor is not None and self._cursor_written.get(partition) != cursor:
                self._write_cursor(partition, cursor)

    def _write_cursor(self, partition: int, offset: int) -> None:
        self.cursor_rows.set(CURSOR_KEY, str(offset).encode(), self.store.context(partition))
        self._cursor_written[partition] = offset

    async def _load_indexes(self, partitions: set[int]) -> None:
        if not partitions <= self.emitted.loaded or not partitions <= self.alert_index.loaded:
            # Read back every owned partition at once (records of the others are usually next).
            owned = set(self.owned) | partitions
            await asyncio.gather(self.emitted.load(owned), self.alert_index.load(owned))

    async def _in_order(self, chunks: list[Chunk]) -> AsyncIterator[list[SourceRecord]]:
        """The chunks' records not processed before, each partition's in offset order, gaps filled from Kafka, in
        runs of at most ``batch_max_records`` records and ``batch_max_bytes`` bytes (always at least one run, maybe
        empty). The caller folds each run before the next one is read."""
        cursors = self.cursors
        run = RunBuilder(self.batch_max_records, self.batch_max_bytes)
        for chunk in chunks:
            partition = chunk.partition
            cursor = cursors.get(partition)
            records = chunk.records
            if (
                cursor is not None
                and records
                and records[0].offset == cursor + 1
                and records[-1].offset == cursor + len(records)
                and run.add_all(records, chunk.sized().size)
            ):  # the usual case: the records that follow the cursor, without a gap, and room for them all
                cursors[partition] = records[-1].offset
                continue
            for record in records:
                offset = record.offset
                if cursor is None or offset != cursor + 1:
                    if cursor is not None and offset <= cursor:
                        continue  # fetched again after a seek back to the committed offset: already processed
                    async for missed in self._missing(partition, offset):
                        for gap_record in missed:
                            if (full := run.add(gap_record)) is not None:
                                yield full
                    cursor = cursors[partition]
                    if offset <= cursor:
                        continue
                cursors[partition] = cursor = offset
                if (full := run.add(record)) is not None:
                    yield full
        yield run.rest()

    async def _publish(self, output: BatchOutput, now_ms: int) -> None:
        """Dead letters and forwards, then final windows, alert transitions and campaign copies sent together; wait
        until Kafka has them all (before the state that marks them done is saved)."""
        settings = self.settings
        for dead in output.dead_letters:
            record, letter = dead.record, dead.letter
            self.live.dead_letters[letter.reason] += 1
            where = f"{settings.events_topic}[{record.partition}]@{record.offset}"
            if dead.index is not None:
                where += f" event #{dead.index}"
            log.warning("dead letter %s at %s: %s", letter.reason, where, letter.message)
            await send_dead_letter(self.dlq_topic, record, settings.events_topic, letter, dead.index, dead.raw)
        pending = await self._forward(output.forwards) if output.forwards else []
        pending += await self._emit(output.finals, now_ms)
        pending += await self._emit_alerts(output.alert_changes, now_ms)
        pending += await self._send_copies(output.campaign_copies)
        if pending:
            await asyncio.gather(*pending)

    def _save(self, output: BatchOutput, partitions: set[int], piece: list[SourceRecord]) -> None:
        """Cursor rows, dedup and order rows, states and the live snapshot, with no await in between (the Redis
        mirror must never see a livestream's new state without its viewer ids). A partition's cursor row gets the
        last offset folded so far: that of ``piece`` while more runs of the batch follow, the in-memory cursor at
        the end (:meth:`_save_cursors`)."""
        live, settings = self.live, self.settings
        now_s = time.time()
        folded = {record.partition: record.offset for record in piece}
        for partition in partitions:
            cursor = self.cursors.get(partition)
            if cursor is None:
                continue
            if partition in folded:
                self._write_cursor(partition, folded[partition])
            live.progress_at_s[partition] = now_s
            try:
                highwater = self.app.consumer.highwater(TP(settings.events_topic, partition))
            except Exception:  # no longer assigned in the client: the revocation fence follows
                highwater = None
            if highwater is not None:
                live.lag[partition] = max(0, highwater - self.committed.get(partition, cursor + 1))
        self.store.save(output)
        for state in output.states:
            live.update(state)
        live.add_viewers(output.viewers)
        live.pending_closed.extend(closed for closed, _ in output.finals)
        counters = output.counters
        live.windows_closed += len(output.finals)
        live.records_processed += counters.records
        live.events_processed += counters.applied_events
        live.counted.merge(counters.applied)
        live.redelivered_records += counters.redelivered_records
        live.duplicate_events += counters.duplicate_events
        live.duplicate_order_updates += counters.duplicate_orders
        live.late_events += len(output.late)
        live.misrouted_records += counters.misrouted_records
        for change, _ in output.alert_changes:
            if change.status == "firing":
                live.alerts_fired[change.rule] += 1
            elif change.channel_id:
                live.resolved_at[change.alert_id] = change.at_ms
        if output.alert_changes:
            live.add_transitions([alert_record(change, int(now_s * 1000)) for change, _ in output.alert_changes])
        if live.dirty or live.pending_closed:
            live.changed.set()

    async def _send_late(self, output: BatchOutput) -> None:
        for late_event in output.late:
            await self.late_topic.send(key=late_event.channel_id.encode(), value=msgspec.json.encode(late_event))

    async def _forward(self, forwards: dict[int, list[SourceRecord]]) -> list[Any]:
        """Records on a partition other than their key's, and this partition's idle ticks: hand them to Kafka for
        their target (original key, value and headers, plus where and when they were appended first), in order,
        a few record batches per target; returns the pending batches (the caller waits for them with the
        batch's other sends, before the state that marks the records done is saved).

        A crash before the source offset is committed forwards them again; the copies carry the same event ids,
        so the livestream's dedup counts them once.
        """
        self.forward_log.note({target: [r for r in rs if not is_tick(r.headers)] for target, rs in forwards.items()})
        copies = {target: _copies(records) for target, records in forwards.items()}
        return await send_batched(self.app.producer, self.settings.events_topic, copies)

    async def _emit_alerts(self, changes: list[tuple[AlertChange, int]], now_ms: int) -> list[Any]:
        """Publish alert transitions not published before; returns the pending sends."""
        pending = []
        for change, partition in changes:
            if self.alert_index.already_emitted(change.alert_id, change.status):
                continue
            record = alert_record(change, emitted_at_ms=now_ms)
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

    async def _send_progress(self, partitions: set[int]) -> None:
        """Tell the campaign aggregator how far each of these partitions has settled (when it changed); only once
        the live snapshot holds every owned livestream (see :meth:`stream.fold.BatchFold.progress`)."""
        pending = []
        for marker in self.core.progress(partitions):
            pending.append(
                await self.campaign_topic.send(key=b"progress", value=campaign.encode(marker), partition=0, force=True)
            )
        if pending:
            await asyncio.gather(*pending)

    async def _missing(self, partition: int, offset: int) -> AsyncIterator[list[Any]]:
        """Records of ``partition`` between the last one processed and ``offset`` that never arrived (usually none),
        streamed from Kafka page by page.

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
            stored = self.cursor_rows.get(CURSOR_KEY, self.store.context(partition))
            cursor = int(stored) if stored is not None else -1
            self.cursors[partition] = offset - 1
        else:
            self.cursors[partition] = max(cursor, offset - 1)
        if offset <= cursor + 1:
            return
        # A partition never processed here (no cursor) that does not start at the beginning is read from the
        # beginning (records its livestreams already applied are skipped by their own offsets).
        topic = self.settings.events_topic
        log.warning("offset gap on %s[%d]: re-reading records %d..%d", topic, partition, cursor + 1, offset - 1)
        self.live.offset_gaps += 1
        count = 0
        async for page in stream_range(
            self.settings.kafka_client_options(), topic, partition, cursor + 1, offset, self.batch_max_records
        ):
            count += len(page)
            yield page
        log.info("offset gap on %s[%d]: %d records re-read", topic, partition, count)

    async def _emit(self, finals: list[tuple[ClosedWindow, int]], now_ms: int) -> list[Any]:
        """Produce final window records not emitted before; returns the pending sends."""
        pending = []
        for closed, partition in finals:
            if self.emitted.already_emitted(closed.channel_id, closed.size_ms, closed.start_ms):
                self.live.duplicate_windows_suppressed += 1
                continue
            record = closed.stats(emitted_at_ms=now_ms)
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
        value = encode_tick(now_ms, self.tick_health.healthy_since_ms)
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
        fold.forward_log.report_due()
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
        if await fold.load_owned_states():
            live.ready = True

    return fold
