"""The bulk path from Kafka to the fold: what one fetch returns for an events partition is handed over as one chunk.

faust-streaming's consumer delivers every record on its own: ``Consumer._drain_messages`` awaits
``wait_first(callback(message), suspend_flow.wait())`` per record (two tasks and an ``asyncio.wait``), then an
``Event``, a queue hand-off and the sensors — about 115 CPU µs a record before any of our code runs. On
single-event records that, not our fold, was the ceiling (6.6k-10k records/s).

:class:`BulkConsumer` is faust's aiokafka consumer with one change in its drain loop: records of the *bulk topic*
(the events topic) are not turned into faust messages; the list aiokafka fetched for a partition is appended,
whole, to a :class:`ChunkQueue` together with the consumer-group generation it was fetched in. Every other topic
(changelogs during recovery, standbys, the campaign input) takes faust's ordinary per-record path unchanged.

Ownership and offsets of the bulk topic are the fold's (``agents/fold.py``), not faust's ack machinery:

- a chunk is processed only if its partition is still owned *in the generation that fetched it*; chunks of an
  older generation or of a revoked partition are dropped unprocessed (they are fetched again from the committed
  offset by whoever owns the partition next);
- on revocation (:meth:`BulkConsumer.on_partitions_revoked`, which runs inside the rebalance, before faust's own
  handling and before the group can hand the partition to anyone else) the sink waits for the chunk being
  processed to finish, then stops owning the partitions and commits the offsets it processed;
- offsets are committed only once Kafka acknowledged every record handed to the producer before they were taken
  (changelog rows, windows, alerts, dead letters, late copies, campaign input: :class:`agents.sends.PendingSends`),
  so a committed offset never runs ahead of the state and output it produced; a send that failed stops the worker
  instead of a commit past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaFaustConsumer
from faust.types import TP

from agents.sends import PendingSends, SendFailedError, pending_sends

log = logging.getLogger(__name__)


PRODUCER_BACKLOG = 5_000
"""Records (changelog, outputs) the producer buffer may hold before processing waits for it to drain."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive records of one partition from one fetch (aiokafka ``ConsumerRecord`` objects)."""

    partition: int
    generation: int
    records: list[Any]
    size: int = -1
    """Key and value bytes of the records (-1: not counted yet, see :meth:`sized`)."""

    def sized(self) -> Chunk:
        """This chunk with :attr:`size` counted."""
        if self.size >= 0:
            return self
        size = sum([len(record.key or b"") + len(record.value or b"") for record in self.records])
        return Chunk(self.partition, self.generation, self.records, size)


def record_bytes(record: Any) -> int:
    """Key and value bytes of a fetched record (what batches and the queue are bounded by)."""
    return len(record.key or b"") + len(record.value or b"")


class RunBuilder:
    """Records gathered, in order, into runs of at most ``max_records`` records and ``max_bytes`` bytes (a record
    over the byte bound is a run of its own)."""

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.run: list[Any] = []
        self.size = 0

    def add_all(self, records: list[Any], size: int) -> bool:
        """Append ``records`` (``size`` bytes in all) at once if they fit the run in progress; False (nothing
        appended) if not."""
        if len(self.run) + len(records) > self.max_records or self.size + size > self.max_bytes:
            return False
        self.run.extend(records)
        self.size += size
        return True

    def add(self, record: Any) -> list[Any] | None:
        """Append ``record``; returns the run it closed (the one before it) when it did not fit there."""
        extra = record_bytes(record)
        closed = None
        if self.run and (len(self.run) >= self.max_records or self.size + extra > self.max_bytes):
            closed, self.run, self.size = self.run, [], 0
        self.run.append(record)
        self.size += extra
        return closed

    def rest(self) -> list[Any]:
        """The run in progress (possibly empty); the builder starts over."""
        rest, self.run, self.size = self.run, [], 0
        return rest


class ChunkQueue:
    """Chunks of the bulk topic waiting for the fold, bounded by the records and the bytes buffered.

    Lives on the main event loop: the drain loop appends, the fold takes. When more than ``max_records`` or
    ``max_bytes`` are buffered the drain loop waits (fetching stops, so memory stays bounded).
    """

    def __init__(self, topic: str, max_records: int, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.topic = topic
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.chunks: deque[tuple[Chunk, int]] = deque()
        """Each chunk with its bytes."""
        self.buffered = 0
        self.buffered_bytes = 0
        self.has_chunks = asyncio.Event()
        self.has_room = asyncio.Event()
        self.has_room.set()

    def put(self, chunk: Chunk) -> None:
        chunk = chunk.sized()
        size = chunk.size
        self.chunks.append((chunk, size))
        self.buffered += len(chunk.records)
        self.buffered_bytes += size
        self.has_chunks.set()
        if self.buffered >= self.max_records or self.buffered_bytes >= self.max_bytes:
            self.has_room.clear()

    def take(self, max_records: int, max_bytes: int = 1 << 62) -> list[Chunk]:
        """Chunks in arrival order, up to ``max_records`` records and ``max_bytes`` bytes (at least one record if
        any): a chunk that does not fit whole is split, its rest stays first in the queue."""
        taken: list[Chunk] = []
        count = size = 0
        while self.chunks and count < max_records and size < max_bytes:
            chunk, chunk_bytes = self.chunks[0]
            if count + len(chunk.records) <= max_records and size + chunk_bytes <= max_bytes:
                self.chunks.popleft()
                taken.append(chunk)
                count += len(chunk.records)
                size += chunk_bytes
                continue
            cut = cut_bytes = 0
            for record in chunk.records:
                extra = record_bytes(record)
                fits = count + cut < max_records and size + cut_bytes + extra <= max_bytes
                if not fits and (count or cut):
                    break
                cut += 1
                cut_bytes += extra
            if cut == len(chunk.records):  # a single record over the byte limit: taken alone
                self.chunks.popleft()
                taken.append(chunk)
            else:
                rest = Chunk(chunk.partition, chunk.generation, chunk.records[cut:], chunk_bytes - cut_bytes)
                self.chunks[0] = (rest, rest.size)
                taken.append(Chunk(chunk.partition, chunk.generation, chunk.records[:cut], cut_bytes))
            count += cut
            size += cut_bytes
            break
        self._taken(count, size)
        return taken

    def drop(self, partitions: set[int]) -> int:
        """Discard the queued chunks of ``partitions``; returns how many records were dropped."""
        kept = deque((c, b) for c, b in self.chunks if c.partition not in partitions)
        dropped = self.buffered - sum(len(c.records) for c, _ in kept)
        dropped_bytes = self.buffered_bytes - sum(b for _, b in kept)
        self.chunks = kept
        self._taken(dropped, dropped_bytes)
        return dropped

    def _taken(self, count: int, size: int) -> None:
        self.buffered -= count
        self.buffered_bytes -= size
        if not self.chunks:
            self.has_chunks.clear()
        if self.buffered < self.max_records and self.buffered_bytes < self.max_bytes:
            self.has_room.set()


class ChunkProcessor:
    """Processes one bulk topic's chunks in order, one batch at a time, fenced by partition ownership.

    Subclasses implement :meth:`process_chunks` and record in :attr:`processed` the last offset of every record
    they handled, per partition (committed as ``offset + 1``). :meth:`run` is the processing loop: it takes the
    queued chunks, keeps those whose partition is owned in the generation that fetched them, processes them under
    :attr:`lock`, and commits every ``commit_interval_s``. If processing raises, the loop records the failure in
    ``on_failure`` and re-raises: the worker stops being ready and exits, and the partitions move to a healthy
    worker (a live process with a dead partition is the one outcome that is never acceptable).
    """

    def __init__(
        self,
        app: Any,
        topic: str,
        max_buffered: int,
        batch_max_records: int,
        commit_interval_s: float,
        *,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        batch_max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.app = app
        self.queue = ChunkQueue(topic, max_buffered, max_buffered_bytes)
        self.batch_max_records = batch_max_records
        self.batch_max_bytes = batch_max_bytes
        self.commit_interval_s = commit_interval_s
        self.owned: dict[int, int] = {}
        """Owned partitions of the topic -> consumer-group generation they were assigned in."""
        self.lock = asyncio.Lock()
        self.processed: dict[int, int] = {}
        """Last offset processed per owned partition."""
        self.committed: dict[int, int] = {}
        """Offset committed per owned partition (the next one to read)."""
        self._committer: asyncio.Future[None] | None = None

    async def process_chunks(self, chunks: list[Chunk]) -> None:
        raise NotImplementedError

    def on_assigned(self, partitions: set[int], generation: int) -> None:
        """Own exactly ``partitions`` from ``generation`` on (chunks fetched in earlier generations, or of
        partitions not owned, are dropped: they are fetched again from the committed offset after the seek that
        follows every assignment)."""
        self.owned = dict.fromkeys(partitions, generation)

    def forget(self, partitions: set[int]) -> None:
        """Drop what is kept about partitions no longer owned (subclasses extend)."""
        for partition in partitions:
            self.processed.pop(partition, None)
            self.committed.pop(partition, None)

    async def on_revoke(self, partitions: set[int]) -> None:
        """Inside the rebalance: let the batch in progress finish, stop owning, commit what was processed."""
        async with self.lock:
            for partition in partitions:
                self.owned.pop(partition, None)
            dropped = self.queue.drop(partitions)
            try:
                await self.commit(partitions)
            except Exception as exc:  # the next owner then redoes some records, which the state skips
                log.warning("commit of revoked partitions %s failed: %r", sorted(partitions), exc)
            self.forget(partitions)
        if dropped:
            log.info("revoked %s: %d queued records left for the next owner", sorted(partitions), dropped)

    def _committable(self, partitions: set[int] | None = None) -> dict[TP, int]:
        """``processed + 1`` of owned partitions not committed yet. Call only between batches: only then does
        every processed record's state sit in the producer (written at the end of its batch)."""
        topic = self.queue.topic
        return {
            TP(topic, partition): offset + 1
            for partition, offset in self.processed.items()
            if (partitions is None or partition in partitions) and offset + 1 > self.committed.get(partition, -1)
        }

    def _commit_point(self, partitions: set[int] | None = None) -> tuple[dict[TP, int], list[Any]]:
        """The offsets to commit and the records they wait for (call between batches)."""
        return self._committable(partitions), self.sends.mark()

    @property
    def sends(self) -> PendingSends:
        """Records handed to the producer and not yet acknowledged (a commit waits for those before it)."""
        return pending_sends(self.app.producer)

    async def _commit(self, offsets: dict[TP, int], marked: list[Any]) -> None:
        """Wait until Kafka acknowledged every ``marked`` record (changelog included), then commit ``offsets``.
        Raises :class:`agents.sends.SendFailedError` (and commits nothing) if one of them failed."""
        if not offsets:
            return
        await self.sends.settle(marked, timeout_s=float(self.app.conf.producer_request_timeout))
        if await self.app.consumer._commit(offsets):
            for tp, offset in offsets.items():
                if offset > self.committed.get(tp.partition, -1) and tp.partition in self.processed:
                    self.committed[tp.partition] = offset

    async def commit(self, partitions: set[int] | None = None) -> None:
        """Commit what was processed (between batches), after any commit still running, once Kafka acknowledged
        every record handed over until now."""
        await self._wait_committer()
        await self._commit(*self._commit_point(partitions))

    async def _wait_committer(self) -> None:
        """Collect the background commit's outcome: a failed send is raised (the worker stops), a failed commit
        request is logged (the next one covers its offsets)."""
        task, self._committer = self._committer, None
        if task is not None:
            try:
                await task
            except SendFailedError:
                raise
            except Exception as exc:
                log.warning("commit failed: %r", exc)

    async def run(self) -> None:
        """The processing loop. Commits run in the background (a flush can take a while under load) with the
        offsets captured between two batches, so processing never waits for them."""
        queue = self.queue
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        _ = self.sends  # follow the producer's records from the first batch on
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.has_chunks.wait(), timeout=self.commit_interval_s)
            chunks = queue.take(self.batch_max_records, self.batch_max_bytes)
            async with self.lock:
                owned = self.owned
                valid = [c for c in chunks if owned.get(c.partition) == c.generation]
                if valid:
                    await self.process_chunks(valid)
                if self.sends.failure is not None:  # never go on (nor commit) past a record Kafka refused
                    raise SendFailedError(f"a record was not acknowledged by Kafka: {self.sends.failure!r}")
                # Backpressure: table writes queue their changelog records in faust's producer buffer without
                # waiting (faust's own streams wait for it per record); do not run ahead of it by much.
                buffer = self.app.producer.buffer
                if buffer.size > PRODUCER_BACKLOG:
                    await buffer.flush_atmost(buffer.size - PRODUCER_BACKLOG // 2)
                due = loop.time() - last_commit >= self.commit_interval_s
                if due and (self._committer is None or self._committer.done()):
                    last_commit = loop.time()
                    await self._wait_committer()  # done: only collects its outcome
                    self._committer = asyncio.ensure_future(self._commit(*self._commit_point()))

    async def stop(self) -> None:
        """On shutdown: wait for the batch in progress, commit what was processed, take nothing more."""
        async with self.lock:
            self.owned.clear()
            try:
                await self.commit()
            except Exception as exc:
                log.warning("final commit failed: %r", exc)


class BulkConsumer(AIOKafkaFaustConsumer):
    """faust's aiokafka consumer: each bulk topic's records go, in chunks, to its processor in :attr:`bulk_sinks`."""

    bulk_sinks: dict[str, ChunkProcessor] = {}

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for topic, sink in self.bulk_sinks.items():
            partitions = {tp.partition for tp in revoked if tp.topic == topic}
            try:
                await sink.on_revoke(partitions)
            except Exception:
                log.exception("fencing revoked partitions %s of %s failed", sorted(partitions), topic)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        # Ownership is taken here, before faust recovers the tables and resumes fetching: a chunk fetched for a
        # partition before its processor knew it owned it would be dropped, and the fetch position is past it.
        for topic, sink in self.bulk_sinks.items():
            sink.on_assigned({tp.partition for tp in assigned if tp.topic == topic}, generation_id)
        await super().on_partitions_assigned(assigned, generation_id)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek every assigned partition to its committed offset, 0 included.

        aiokafka's ``seek_to_committed`` seeks only to a committed offset above 0, so a partition whose committed
        offset is its beginning kept the fetch position of the records fetched (and discarded) during table
        recovery: they were skipped, and only the gap re-read of the fold brought them back."""
        consumer = self._thread._ensure_consumer()

        async def seek_all() -> Mapping[TP, int]:
            committed: Mapping[TP, int] = await consumer.seek_to_committed()
            for tp, offset in committed.items():
                if offset == 0:
                    consumer.seek(tp, 0)
            return committed

        result: Mapping[TP, int] = await self._thread.call_thread(seek_all)
        return result

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised by integration tests
        sinks = self.bulk_sinks
        if not sinks:
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        read_offset = self._read_offset
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        acks_enabled_for = self.app.topics.acks_enabled_for
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    # As faust's getmany: records fetched while flow is stopped are not delivered; the next
                    # owner (or this one after recovery) reads them again from the committed offsets.
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        log.warning("seek to committed offsets failed while flow was stopped: %r", exc)
                    continue
                generation = self.app.consumer_generation_id
                for tp, fetched in records.items():
                    if not fetched or (active is not None and tp not in active and tp not in self._buffered_partitions):
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    sink = sinks.get(tp.topic)
                    if sink is not None:
                        queue = sink.queue
                        queue.put(Chunk(tp.partition, generation, fetched))
                        read_offset[tp] = fetched[-1].offset
                        if not queue.has_room.is_set():
                            await self.wait_first(queue.has_room.wait(), self.suspend_flow.wait())
                        continue
                    for record in fetched:  # faust's own per-record path for every other topic
                        if not self.flow_active or self.app.consumer_generation_id != generation:
                            break
                        offset = record.offset
                        last = read_offset[tp]
                        if last is not None and offset < last:
                            continue
                        if last and offset - last > 1 and acks_enabled_for(tp.topic):
                            await self._add_gap(tp, last + 1, offset)
                        if self._commit_every is not None and self._n_acked >= self._commit_every:
                            self._n_acked = 0
                            await self.commit()
                        await self.wait_first(callback(self._to_message(tp, record)), self.suspend_flow.wait())
                        read_offset[tp] = offset
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("broker stopped the consumer, shutting down")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            log.exception("bulk drain loop raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


def install(app: Any, sink: ChunkProcessor, topic: Any) -> None:
    """Make ``app`` create a :class:`BulkConsumer` that hands ``sink.queue.topic`` to ``sink`` (call before start;
    several sinks, one per topic, may be installed)."""
    consumer_class = app.transport.Consumer
    if not (isinstance(consumer_class, type) and issubclass(consumer_class, BulkConsumer)):
        consumer_class = app.transport.Consumer = type("BulkConsumer", (BulkConsumer,), {"bulk_sinks": {}})
    consumer_class.bulk_sinks[sink.queue.topic] = sink
    app.topics.add(topic)  # subscribed (and co-partitioned with the tables) without a faust stream


def start_supervised(app: Any, processor: ChunkProcessor, live: Any, name: str) -> None:
    """Run ``processor`` as an app task; on shutdown let its batch finish and commit. If the loop raises, the
    worker is marked failed (``live.fold_failure``: not ready, not healthy) and stops, so its partitions move to a
    healthy worker and processing resumes there from the committed offsets."""

    async def supervised() -> None:
        try:
            await processor.run()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.exception("the %s processing loop failed; stopping the worker", name)
            live.fold_failure = f"{name}: {exc!r}"
            live.ready = False
            asyncio.get_running_loop().call_later(30, os._exit, 70)  # if the graceful stop hangs
            await app.crash(exc)

    supervised.__name__ = supervised.__qualname__ = name.replace("-", "_")
    app.task(supervised)

    async def stop_processing(sender: Any, **_: Any) -> None:
        await processor.stop()

    app.on_before_shutdown.connect(stop_processing, weak=False)
