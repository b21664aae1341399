"""The processing agent: ``<namespace>.events`` -> per-livestream state (RocksDB table) and the live snapshot.

Each batch of up to ``batch_max_records`` Kafka records is decoded at once, folded into the in-memory states of
the livestreams it touches, and each touched state is written to the table *once* per batch. faust acknowledges
the batch's records only after this body returns, and commits offsets only after the changelog is flushed, so a
state never lags the committed offset; redelivered records are skipped by their offset (``stream.state``).
Windows closed by the batch are published to ``<namespace>.stats.1m`` (compacted, key ``channel_id|window_start``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
import msgspec
from faust.types import EventT

from agents.dlq import send_dead_letter
from agents.table_context import PartitionedTable
from schemas.stats import WindowStats
from stream.decode import DeadLetter, TimeBounds, decode_record
from stream.settings import Settings
from stream.snapshot import ClosedWindow, LiveSnapshot
from stream.state import (
    ChannelState,
    FoldEffects,
    WindowSpec,
    apply_record,
    close_windows,
    decode_state,
    encode_state,
    watermark,
)

log = logging.getLogger(__name__)
_stats_encoder = msgspec.json.Encoder()


def raw_bytes() -> faust.Schema:
    """A bytes-in, bytes-out schema. Each topic and table needs its own instance: a Schema shared between the
    events topic and a table made faust 0.15.3 acknowledge the topic's records without delivering them."""
    return faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


def register(app: faust.App, settings: Settings, live: LiveSnapshot) -> None:
    events_topic = app.topic(settings.events_topic, partitions=settings.partitions, schema=raw_bytes())
    dlq_topic = app.topic(settings.dlq_topic, partitions=1, schema=raw_bytes())
    late_topic = app.topic(settings.late_topic, partitions=1, schema=raw_bytes())
    stats_topic = app.topic(
        settings.stats_1m_topic, partitions=settings.partitions, compacting=True, schema=raw_bytes()
    )
    table = app.Table(
        "channel-state",
        default=None,
        partitions=settings.partitions,
        help="ChannelState per livestream",
        key_type=bytes,
        value_type=bytes,
        schema=raw_bytes(),
    )
    spec = WindowSpec(
        size_ms=settings.window_size_s * 1000,
        grace_ms=settings.window_grace_s * 1000,
        lateness_ms=settings.allowed_lateness_s * 1000,
    )

    @app.agent(events_topic, name="fold-events")
    async def fold_events(stream: faust.StreamT[bytes]) -> None:
        states = PartitionedTable(table)  # type: ignore[arg-type]
        batches = stream.take_events(settings.batch_max_records, settings.batch_within_s)  # type: ignore[attr-defined]
        async for batch in batches:
            await process_batch(batch, states, spec, settings, live, dlq_topic, late_topic, stats_topic)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
        live.drop_partitions({tp.partition for tp in revoked if tp.topic == settings.events_topic})

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def resync_assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
        live.resync_pending = True

    @app.timer(1.0, name="resync-live-snapshot")
    async def resync_live_snapshot() -> None:
        """After an assignment and table recovery, load every owned state into the live snapshot (and so Redis).

        Redis may have missed the last flush of the previous owner; records that are redelivered are skipped and
        would not mark their channel dirty, so the new owner re-mirrors everything it owns once.
        """
        if not live.resync_pending or app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return
        live.resync_pending = False
        for _key, value in table.items():
            live.update(decode_state(value))


async def process_batch(
    batch: list[EventT],
    states: PartitionedTable,
    spec: WindowSpec,
    settings: Settings,
    live: LiveSnapshot,
    dlq_topic: Any,
    late_topic: Any,
    stats_topic: Any,
) -> None:
    now_ms = int(time.time() * 1000)
    bounds = TimeBounds(
        min_ts_ms=now_ms - settings.max_past_days * 86_400_000, max_ts_ms=now_ms + settings.max_future_s * 1000
    )
    effects = FoldEffects()
    touched: dict[str, tuple[ChannelState, EventT]] = {}
    for event in batch:
        message = event.message
        result = decode_record(message.key, message.value, bounds)
        if isinstance(result, DeadLetter):
            live.dead_letters[result.reason] += 1
            log.warning(
                "dead letter %s at %s[%d]@%d: %s",
                result.reason,
                message.topic,
                message.partition,
                message.offset,
                result.message,
            )
            await send_dead_letter(dlq_topic, event, result)
            continue
        entry = touched.get(result.channel_id)
        if entry is None:
            key = result.channel_id.encode()
            stored = states.get(key, event)
            state = decode_state(stored) if stored is not None else ChannelState(channel_id=result.channel_id)
        else:
            state = entry[0]
        apply_record(state, result.events, message.partition, message.offset, spec, effects)
        touched[result.channel_id] = (state, event)

    # First every state change, table write and live-snapshot update, with no await in between (so the Redis
    # mirror never sees a channel's new state without its viewer ids); then the buffered sends.
    finals: list[ClosedWindow] = []
    for channel_id, (state, source) in touched.items():
        closed = close_windows(state, watermark(state, spec), spec)
        if channel_id in effects.touched or closed or channel_id not in live.channels:
            states.set(channel_id.encode(), encode_state(state), source)
            live.update(state)
        finals.extend(ClosedWindow(channel_id, state.campaign, start, spec.size_ms, c) for start, c in closed)
    live.add_viewers(effects.viewers)
    live.pending_closed.extend(finals)
    live.windows_closed += len(finals)
    live.records_processed += len(batch)
    live.events_processed += effects.applied_events
    live.redelivered_records += effects.redelivered_records
    live.late_events += len(effects.late)

    emitted_at_ms = int(time.time() * 1000)
    for window in finals:
        await stats_topic.send(
            key=f"{window.channel_id}|{window.start_ms}".encode(),
            value=_stats_encoder.encode(WindowStats.from_closed(window, emitted_at_ms=emitted_at_ms)),
        )
    for late_event in effects.late:
        await late_topic.send(key=late_event.channel_id.encode(), value=msgspec.json.encode(late_event))
