"""The processing agent: ``<namespace>.events`` -> per-livestream state (RocksDB table) and the live snapshot.

Per batch of up to ``batch_max_records`` Kafka records:

1. decode every record (bad ones go to the dead-letter topic) and fold it into its livestream's state, read from
   the table once per batch (redelivered records and repeated event ids are skipped by the core);
2. close the windows the watermark has passed (or, on an idle tick, the idle watermark) and produce their final
   records to the stats topics, to the stats partition of the livestream's events partition, and *wait until
   Kafka has them*; windows found already emitted (a crash between emitting and saving) are not sent again;
3. write each touched state to the table once, and update the live snapshot, with no ``await`` in between.

faust acknowledges the batch's records only after this body returns and commits offsets only after flushing the
producer (the changelog included), so a committed offset never runs ahead of the state it produced.

Idle ticks: every ``idle_tick_s`` the worker appends a tick record (key ``__tick__``) to each events partition it
owns. A tick runs the idle check for that partition's livestreams inside the ordinary ordered path, so closing
the last windows of a finished stream needs no second writer of the table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
import msgspec
from faust.types import TP, EventT

from agents.dlq import send_dead_letter
from agents.emitted import AlertIndex, EmittedIndex
from agents.startup import shorten_fetch_wait
from agents.table_context import PartitionedTable
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
from stream.decode import DeadLetter, TimeBounds, decode_record
from stream.settings import Settings
from stream.snapshot import ChannelView, ClosedWindow, LiveSnapshot
from stream.state import (
    ChannelState,
    FoldEffects,
    IdRow,
    IdRows,
    WindowSpec,
    apply_record,
    close_windows,
    decode_state,
    encode_state,
    ended_watermark,
    idle_watermark,
)

log = logging.getLogger(__name__)
TICK_KEY = b"__tick__"
CURSOR_KEY = b"\x00cursor"
"""Key of a partition's cursor row in the event-ids table (id rows are ``channel|bucket``)."""
_stats_encoder = msgspec.json.Encoder()
_id_encoder = msgspec.msgpack.Encoder()
_id_decoder = msgspec.msgpack.Decoder(dict[str, int])


def id_row_key(channel_id: str, bucket: int) -> bytes:
    return f"{channel_id}|{bucket}".encode()


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


class Fold:
    """The agent's collaborators: topics, the state table, the emitted-window index, the live snapshot."""

    def __init__(self, app: faust.App, settings: Settings, live: LiveSnapshot) -> None:
        self.settings = settings
        self.live = live
        self.spec = window_spec(settings)
        parts = settings.partitions
        self.events_topic = app.topic(settings.events_topic, partitions=parts, schema=raw_bytes())
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
        # The offset of the last events record processed per partition lives in the same table, in its partition,
        # under a key no livestream can have (one RocksDB per table partition is memory; a table of 4 keys is waste).
        self.cursor_rows = self.id_rows
        self.cursors: dict[int, int] = {}
        self.app = app
        self.emitted = EmittedIndex(settings.kafka_bootstrap, [settings.stats_1m_topic, settings.stats_hop_topic])
        self.rules = load_rules(settings.alert_rules)
        self.alerts_topic = app.topic(settings.alerts_topic, partitions=parts, schema=raw_bytes())
        self.alert_index = AlertIndex(settings.kafka_bootstrap, settings.alerts_topic)
        self.campaign_topic = app.topic(settings.campaign_input_topic, partitions=1, schema=raw_bytes())
        self.partition_clock: dict[int, int] = {}
        """Newest event time applied per owned events partition (the stream-down clock)."""
        self.scanned_at: dict[int, int] = {}
        self.progress_sent: dict[int, int] = {}
        self.partition_wall: dict[int, int] = {}
        """Wall-clock (Kafka) timestamp of the newest record applied per partition (campaign idleness)."""

    async def process_batch(self, batch: list[EventT]) -> None:
        settings, live, spec = self.settings, self.live, self.spec
        batch_partitions = {event.message.partition for event in batch}
        if not batch_partitions <= self.emitted.loaded or not batch_partitions <= self.alert_index.loaded:
            await asyncio.gather(self.emitted.load(batch_partitions), self.alert_index.load(batch_partitions))
        now_ms = int(time.time() * 1000)
        bounds = TimeBounds(now_ms - settings.max_past_days * 86_400_000, now_ms + settings.max_future_s * 1000)
        effects = FoldEffects(gap_ms=stream_down_gap_ms(self.rules))
        touched: dict[str, tuple[ChannelState, EventT]] = {}
        ticks: dict[int, EventT] = {}
        current: list[EventT] = []  # the record being folded: its partition is the id rows' partition

        def load_ids(channel_id: str, bucket: int) -> IdRow:
            stored = self.id_rows.get(id_row_key(channel_id, bucket), current[0])
            return _id_decoder.decode(stored) if stored is not None else {}

        ids = IdRows(load_ids)
        cursor_sources: dict[int, EventT] = {}

        dead: list[tuple[bytes | None, bytes | None, int, int, DeadLetter]] = []
        partition_wall = self.partition_wall

        def fold_record(
            key: bytes | None, value: bytes | None, partition: int, offset: int, produced_ms: int, event: EventT
        ) -> None:
            if key == TICK_KEY:
                ticks[partition] = event
                return
            partition_wall[partition] = produced_ms
            result = decode_record(key, value, bounds)
            if isinstance(result, DeadLetter):
                dead.append((key, value, partition, offset, result))
                return
            channel_id = result.channel_id
            entry = touched.get(channel_id)
            state = entry[0] if entry is not None else self._state(channel_id, event, touched)
            current[:] = [event]
            apply_record(state, result.events, partition, offset, spec, effects, produced_ms, ids)
            touched[channel_id] = (state, event)

        cursors = self.cursors
        for event in batch:
            message = event.message
            partition, offset = message.partition, message.offset
            cursor = cursors.get(partition)
            if cursor is not None and offset <= cursor + 1:  # the usual case: the next record of the partition
                if offset > cursor:
                    cursors[partition] = offset
            else:
                for missed in await self._missing(partition, offset, event):
                    fold_record(missed.key, missed.value, missed.partition, missed.offset, missed.timestamp, event)
            cursor_sources[partition] = event
            fold_record(message.key, message.value, partition, offset, int(message.timestamp * 1000), event)

        for key, value, partition, offset, letter in dead:
            live.dead_letters[letter.reason] += 1
            topic = settings.events_topic
            log.warning("dead letter %s at %s[%d]@%d: %s", letter.reason, topic, partition, offset, letter.message)
            await send_dead_letter(self.dlq_topic, key, value, settings.events_topic, partition, offset, letter)

        # A tick is processed after every record appended before it, so its timestamp is a point at which the
        # partition had caught up: a livestream with no record produced in the idle timeout before it is idle.
        idle_at: dict[str, int] = {}
        for partition, tick in ticks.items():
            for channel_id, owned in list(live.channels.items()):
                if owned.partition == partition and channel_id not in touched:
                    touched[channel_id] = (self._state(channel_id, tick, touched), tick)
                    idle_at[channel_id] = int(tick.message.timestamp * 1000)

        changes = self._scan_partitions(batch, ticks, touched)
        for gap in effects.gaps:
            state, source = touched[gap.channel_id]
            changes.extend((c, source.message.partition) for c in evaluate_gap(state, gap, self.rules))
        finals: list[tuple[ClosedWindow, int]] = []
        copies: list[campaign.ChannelWindowCopy] = []
        for channel_id, (state, source) in touched.items():
            partition = source.message.partition
            if channel_id in effects.touched:
                back = resolve_if_active(state, self.rules)
                if back is not None:
                    changes.append((back, partition))
            if channel_id in idle_at:
                mark = idle_watermark(state, spec, idle_at[channel_id])
            else:
                mark = ended_watermark(state, spec, self.partition_clock.get(partition, -1))
            for window in close_windows(state, mark, spec):
                closed = ClosedWindow(channel_id, state.campaign, window.start_ms, window.size_ms, window.counters)
                finals.append((closed, partition))
                one_minute = window.size_ms == spec.size_ms
                changes.extend((c, partition) for c in evaluate_closed_window(state, window, self.rules, one_minute))
                if one_minute:
                    copies.append(
                        campaign.ChannelWindowCopy(channel_id, state.campaign, window.start_ms, window.counters)
                    )
        await self._emit(finals, now_ms)
        await self._emit_alerts(changes, now_ms)
        await self._send_copies(copies)

        # Every state change and live-snapshot update together, with no await in between (the Redis mirror must
        # never see a channel's new state without its viewer ids).
        for partition, source in cursor_sources.items():
            self.cursor_rows.set(CURSOR_KEY, str(self.cursors[partition]).encode(), source)
            highwater = self.app.consumer.highwater(TP(settings.events_topic, partition))
            if highwater is not None:
                live.lag[partition] = max(0, highwater - self.cursors[partition] - 1)
        for channel_id, bucket in ids.changed:
            row_key = id_row_key(channel_id, bucket)
            self.id_rows.set(row_key, _id_encoder.encode(ids.rows[(channel_id, bucket)]), touched[channel_id][1])
        for channel_id, bucket in ids.dropped:
            self.id_rows.delete(id_row_key(channel_id, bucket), touched[channel_id][1])
        closed_channels = {closed.channel_id for closed, _ in finals} | {c.channel_id for c, _ in changes}
        for channel_id, (state, source) in touched.items():
            if channel_id in effects.touched or channel_id in closed_channels or channel_id not in live.channels:
                self.states.set(channel_id.encode(), encode_state(state), source)
                live.update(state)
        live.add_viewers(effects.viewers)
        live.pending_closed.extend(closed for closed, _ in finals)
        live.windows_closed += len(finals)
        live.records_processed += len(batch) - len(ticks)
        live.events_processed += effects.applied_events
        live.redelivered_records += effects.redelivered_records
        live.duplicate_events += effects.duplicate_events
        live.late_events += len(effects.late)
        for change, _ in changes:
            if change.status == "firing":
                live.alerts_fired[change.rule] += 1
        if live.dirty or live.pending_closed:
            live.changed.set()
        for late_event in effects.late:
            await self.late_topic.send(key=late_event.channel_id.encode(), value=msgspec.json.encode(late_event))
        await self._send_progress(batch_partitions, ticks)

    def _scan_partitions(
        self, batch: list[EventT], ticks: dict[int, EventT], touched: dict[str, tuple[ChannelState, EventT]]
    ) -> list[tuple[AlertChange, int]]:
        """Livestreams of this batch's partitions that the partition's event-time clock affects, untouched or not:
        ``stream_down`` (see :func:`stream.alerts.evaluate_silence`), and ended livestreams whose last windows can
        close (:func:`stream.state.ended_watermark`); those are added to ``touched``.

        The clock of a partition is the newest event time applied on it; at an idle tick a livestream's own clock
        also runs on with the wall time since its last record (a tick is processed after every record produced
        before it). A partition is scanned when its clock moved by a second or more, and at every tick.
        """
        rule = self.rules.stream_down
        live, silence_ms, grace_ms = self.live, (rule.silence_s + rule.skew_s) * 1000, self.spec.grace_ms
        sources: dict[int, EventT] = {event.message.partition: event for event in batch}
        for state, _ in touched.values():
            if state.max_ts_ms > self.partition_clock.get(state.partition, -1):
                self.partition_clock[state.partition] = state.max_ts_ms
        changes: list[tuple[AlertChange, int]] = []
        for partition, source in sources.items():
            clock = self.partition_clock.get(partition, -1)
            tick = ticks.get(partition)
            if tick is None and clock - self.scanned_at.get(partition, -(1 << 62)) < 1000:
                continue
            self.scanned_at[partition] = clock
            tick_ms = int(tick.message.timestamp * 1000) if tick is not None else -1
            candidates = {
                cid: ChannelView.of(entry[0]) for cid, entry in touched.items() if entry[0].partition == partition
            }
            for channel_id, view in live.channels.items():
                if view.partition == partition and channel_id not in candidates:
                    candidates[channel_id] = view
            for channel_id, view in candidates.items():
                if view.ended_ms >= 0:
                    if view.open_windows and clock >= view.ended_ms + grace_ms and channel_id not in touched:
                        touched[channel_id] = (self._state(channel_id, source, touched), source)
                    continue
                if not rule.enabled or "stream_down" in (view.alerts or ()) or view.concurrent < rule.min_viewers:
                    continue
                own_clock = clock
                if tick_ms >= 0 and view.last_wall_ms >= 0:
                    own_clock = max(own_clock, view.max_ts_ms + tick_ms - view.last_wall_ms)
                if own_clock - view.max_ts_ms < silence_ms:
                    continue
                current = self._state(channel_id, source, touched)
                change = evaluate_silence(current, own_clock, self.rules)
                if change is not None:
                    touched[channel_id] = (current, source)
                    changes.append((change, partition))
        return changes

    async def _emit_alerts(self, changes: list[tuple[AlertChange, int]], now_ms: int) -> None:
        """Publish alert transitions not published before, and wait until Kafka has them."""
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
        if pending:
            await asyncio.gather(*pending)

    async def _send_copies(self, copies: list[campaign.ChannelWindowCopy]) -> None:
        """Final 1-minute windows to the campaign aggregator (sent again after a crash; it ignores repeats)."""
        pending = [
            await self.campaign_topic.send(key=c.campaign.encode(), value=campaign.encode(c), partition=0, force=True)
            for c in copies
        ]
        if pending:
            await asyncio.gather(*pending)

    async def _send_progress(self, partitions: set[int], ticks: dict[int, EventT]) -> None:
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
            # Idle = no record for the idle timeout since the newest record, or since this worker got the partition.
            last_record = self.partition_wall.setdefault(partition, int(time.time() * 1000))
            idle = tick is not None and tick.message.timestamp * 1000 - last_record >= spec.idle_timeout_ms
            clock = self.partition_clock.get(partition, -1)
            mark = clock - spec.lateness_ms if clock >= 0 else -1
            bounds = self.live.open_bounds.get(partition, {})
            settled = campaign.settled_through(bounds, mark, spec.size_ms, spec.grace_ms, idle)
            if self.progress_sent.get(partition) == settled:
                continue
            marker = campaign.PartitionProgress(partition, settled)
            pending.append(
                await self.campaign_topic.send(key=b"progress", value=campaign.encode(marker), partition=0, force=True)
            )
            self.progress_sent[partition] = settled
        if pending:
            await asyncio.gather(*pending)

    async def _missing(self, partition: int, offset: int, source: EventT) -> list[Any]:
        """Records of ``partition`` between the last one processed and ``offset`` that never arrived (usually none).

        faust acknowledges records it drops around rebalances and on shutdown, which can let their offsets be
        committed unprocessed. Every record of the events topic passes through here and the last processed offset
        per partition is kept in a table, so a jump means records were skipped: they are read straight from Kafka
        and folded first (records already applied are then skipped by their livestream's offset). The batch loop
        calls this only when the offset is not the next one of a known cursor.
        """
        cursor = self.cursors.get(partition)
        if cursor is None:
            stored = self.cursor_rows.get(CURSOR_KEY, source)
            cursor = int(stored) if stored is not None else -1
        self.cursors[partition] = max(cursor, offset)
        if cursor < 0 or offset <= cursor + 1:
            return []
        topic = self.settings.events_topic
        missed = await read_range(self.settings.kafka_bootstrap, topic, partition, cursor + 1, offset)
        log.warning("offset gap on %s[%d]: re-read %d records from %d", topic, partition, len(missed), cursor + 1)
        self.live.offset_gaps += 1
        return missed

    def _state(self, channel_id: str, source: EventT, touched: dict[str, tuple[ChannelState, EventT]]) -> ChannelState:
        entry = touched.get(channel_id)
        if entry is not None:
            return entry[0]
        stored = self.states.get(channel_id.encode(), source)
        return decode_state(stored) if stored is not None else ChannelState(channel_id=channel_id)

    async def _emit(self, finals: list[tuple[ClosedWindow, int]], now_ms: int) -> None:
        """Produce final window records not emitted before, and wait until Kafka has acknowledged them all."""
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
        if pending:
            await asyncio.gather(*pending)

    async def send_ticks(self, app: faust.App) -> None:
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == self.settings.events_topic}
        value = msgspec.json.encode({"type": "tick", "wall_ms": int(time.time() * 1000)})
        for partition in sorted(owned):
            await self.events_topic.send(key=TICK_KEY, value=value, partition=partition)


def register(app: faust.App, settings: Settings, live: LiveSnapshot) -> Fold:
    fold = Fold(app, settings, live)

    @app.agent(fold.events_topic, name="fold-events")
    async def fold_events(stream: faust.StreamT[bytes]) -> None:
        batches = stream.take_events(settings.batch_max_records, settings.batch_within_s)  # type: ignore[attr-defined]
        async for batch in batches:
            await fold.process_batch(batch)

    @app.timer(settings.idle_tick_s, name="idle-ticks")
    async def idle_ticks() -> None:
        if not app.rebalancing:
            await fold.send_ticks(app)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == settings.events_topic}
        live.ready = False
        live.drop_partitions(partitions)
        for partition in partitions:
            fold.cursors.pop(partition, None)
            fold.partition_clock.pop(partition, None)
            fold.scanned_at.pop(partition, None)
            fold.progress_sent.pop(partition, None)
            fold.partition_wall.pop(partition, None)
        fold.emitted.forget(partitions)
        fold.alert_index.forget(partitions)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def resync_assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
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
