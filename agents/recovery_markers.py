"""Table recovery that ends on changelogs written in Kafka transactions.

faust's recovery of an active changelog partition ends once it has *applied* the record at the partition's
highwater - 1. A changelog written by a transactional producer ends in a commit (or abort) marker: a control record
that occupies that offset and that no consumer ever receives, so faust would wait for good (its own workaround,
``detect_aborted_tx``, runs only under faust's exactly-once mode and after two 5-second queue timeouts; measured
on this project's worker: not ready after 120 s, against 3.7 s for the same rows written without a transaction).

Here, every :data:`RECOVERY_CHECK_S` while recovery runs: an active changelog partition whose last applied record
is the one right before the offset faust waits for, and whose consumer position has passed that offset, counts as
read to its end once the changelog queue was empty on two checks in a row and a read of that one offset from Kafka
returns no record (so it is a marker, never a record still on its way from the consumer to faust: ending early on
one would skip it). When no active partition is left, recovery ends as faust ends it.

faust's consumer reads uncommitted records, so a changelog's tail is its last records then one marker (commit or
abort); with a ``read_committed`` consumer an aborted tail would leave more than one offset undelivered and this
rule would not fire (to extend with the move to read_committed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from stream.settings import Settings

log = logging.getLogger(__name__)

RECOVERY_CHECK_S = 0.2


class OffsetProbe:
    """A consumer of its own (no group, read_uncommitted, started once and kept for the worker's life) that tells
    which of some partition offsets hold a record, as opposed to a transaction marker."""

    def __init__(self, kafka: Mapping[str, Any]) -> None:
        self.consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False)
        self.started = False

    async def holding_records(self, offsets: Mapping[TopicPartition, int], timeout_s: float = 10.0) -> set[Any]:
        """The partitions of ``offsets`` whose offset holds a record (or could not be read in ``timeout_s``: a
        partition is counted as holding a record unless shown not to)."""
        consumer = self.consumer
        if not self.started:
            await consumer.start()
            self.started = True
        consumer.assign(list(offsets))
        for tp, offset in offsets.items():
            consumer.seek(tp, offset)
        found: set[Any] = set()
        unknown = set(offsets)
        deadline = time.monotonic() + timeout_s
        while unknown and time.monotonic() < deadline:
            batch = await consumer.getmany(*unknown, timeout_ms=200)
            found |= {tp for tp, records in batch.items() if any(r.offset == offsets[tp] for r in records)}
            unknown = {tp for tp in unknown - found if await consumer.position(tp) <= offsets[tp]}
        return found | unknown

    async def stop(self) -> None:
        if self.started:
            await self.consumer.stop()


async def end_partitions_read_past_their_end(app: Any, recovery: Any, probe: OffsetProbe) -> bool:
    """Count every active changelog partition whose last applied record is right before faust's awaited offset, and
    whose consumer passed that offset, as recovered if that offset holds no record in Kafka (it is a marker, not a
    record still on its way to faust); end recovery when none is left. Returns True if it ended recovery."""
    offsets, last_offsets = recovery.active_offsets, recovery.active_highwaters
    candidates: dict[TopicPartition, int] = {}
    for tp, last in list(last_offsets.items()):
        if last is None or last < 0 or offsets.get(tp, -1) != last - 1:
            continue  # done, or records still to come: only a single trailing offset can be a marker for sure
        position = await app.consumer.position(tp)
        if position is not None and position > last:
            candidates[TopicPartition(tp.topic, tp.partition)] = last
    if candidates:
        records = await probe.holding_records(candidates)
        for candidate, last in candidates.items():
            tp = TP(candidate.topic, candidate.partition)
            if candidate in records or last_offsets.get(tp) != last or offsets.get(tp, -1) != last - 1:
                continue  # a record on its way to faust, or recovery moved on meanwhile
            log.info("changelog %s[%d] read to its end (offset %d is a transaction marker)", *tp, last)
            offsets[tp] = last
    if recovery.in_recovery and not recovery.need_recovery():
        recovery.flush_buffers()
        recovery._set_recovery_ended()
        recovery.signal_recovery_end.set()
        return True
    return False


def register(app: faust.App, settings: Settings) -> None:
    """Watch recovery from the first partition assignment on (faust starts an app's tasks only once recovery has
    completed, too late for this)."""
    watching: list[asyncio.Future[None]] = []

    def start_watching(_sender: Any, *_: Any, signal: Any = None, **__: Any) -> None:
        if not watching:
            watching.append(app.add_future(end_recovery_at_transaction_markers(app, settings.kafka_client_options())))

    app.on_partitions_assigned.connect(cast(Any, start_watching), weak=False)  # mode types its handlers narrowly


async def end_recovery_at_transaction_markers(app: Any, kafka: Mapping[str, Any]) -> None:
    """See the module. Runs for the life of the worker (recovery restarts at every rebalance)."""
    quiet_checks = 0
    tables = app.tables
    probe = OffsetProbe(kafka)
    try:
        while not app.should_stop:
            await asyncio.sleep(RECOVERY_CHECK_S)
            recovery = tables.recovery
            if not recovery.in_recovery:
                quiet_checks = 0
                continue
            quiet_checks = quiet_checks + 1 if tables.changelog_queue.empty() else 0
            if quiet_checks >= 2:
                try:
                    await end_partitions_read_past_their_end(app, recovery, probe)
                except Exception as exc:  # a rebalance moved the partitions meanwhile: the next check sees the new ones
                    log.debug("recovery check: %r", exc)
    finally:
        await probe.stop()
