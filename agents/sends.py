"""Every record a worker hands to Kafka, followed until Kafka acknowledged it, so offsets are committed only after.

A batch's records reach Kafka by two routes: table writes put their changelog records in faust's producer buffer
(``ProducerBuffer.put``; a background task hands them to aiokafka later), and the fold's own sends (windows,
alerts, dead letters, late copies, campaign input, forwards) go straight to the producer (``Producer.send``). faust's
``ProducerBuffer.flush()`` is no barrier: it returns after 100 ms without a record sent even while records are still
queued. :class:`PendingSends` wraps both routes of one producer and keeps every record not yet acknowledged;
:meth:`PendingSends.mark` names the records handed over so far (called between batches, when the offsets to commit
are taken) and :meth:`PendingSends.settle` waits until those are acknowledged, or raises :class:`SendFailedError` if one
of them failed or did not settle in time. A failed send is terminal (the client already retried what can be
retried), so the worker stops instead of committing past it, and the records are processed again from the last
committed offset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder

log = logging.getLogger(__name__)


class SendFailedError(RuntimeError):
    """A record handed to Kafka before a commit point was not acknowledged: the commit must not happen."""


class PendingSends:
    """The records of one producer not yet acknowledged by Kafka (see the module)."""

    def __init__(self) -> None:
        self.outstanding: set[asyncio.Future[Any]] = set()
        self.failure: BaseException | None = None
        """The first send that failed (sticky: nothing is committed after it)."""

    def track(self, future: asyncio.Future[Any]) -> None:
        if future.done():
            self._done(future)
            return
        self.outstanding.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[Any]) -> None:
        self.outstanding.discard(future)
        if future.cancelled():
            error: BaseException | None = SendFailedError("a send was cancelled before Kafka acknowledged it")
        else:
            error = future.exception()
        if error is not None and self.failure is None:
            self.failure = error
            log.error("a record was not acknowledged by Kafka: %r (nothing is committed after it)", error)

    def mark(self) -> list[asyncio.Future[Any]]:
        """The records handed over until now (a commit point)."""
        return list(self.outstanding)

    async def settle(self, marked: list[asyncio.Future[Any]], timeout_s: float) -> None:
        """Wait until every ``marked`` record is acknowledged; raise :class:`SendFailedError` if one failed (now or
        earlier) or did not settle within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        waiting = {future for future in marked if not future.done()}
        while True:
            if self.failure is not None:
                raise SendFailedError(f"a record was not acknowledged by Kafka: {self.failure!r}") from self.failure
            if not waiting:
                return
            left = deadline - loop.time()
            if left <= 0:
                raise SendFailedError(f"{len(waiting)} records not acknowledged by Kafka within {timeout_s:.0f} s")
            _, waiting = await asyncio.wait(waiting, timeout=min(left, 1.0))

    def install(self, producer: Any) -> None:
        """Follow every record of faust's ``producer``: those put in its buffer and those sent directly."""
        buffer = producer.buffer
        put: Callable[[Any], None] = buffer.put

        def tracked_put(future: Any) -> None:
            self.track(future)
            put(future)

        buffer.put = tracked_put
        send: Callable[..., Awaitable[Any]] = producer.send

        async def tracked_send(*args: Any, **kwargs: Any) -> Any:
            try:
                future = await send(*args, **kwargs)
            except Exception as exc:  # refused before it was queued (too large, producer gone): never delivered
                if self.failure is None:
                    self.failure = exc
                raise
            if isinstance(future, asyncio.Future):
                self.track(future)
            return future

        producer.send = tracked_send


def pending_sends(producer: Any) -> PendingSends:
    """The one :class:`PendingSends` of ``producer`` (installed on first use; every processor shares it)."""
    found: PendingSends | None = getattr(producer, "_livestream_pending_sends", None)
    if found is None:
        found = PendingSends()
        found.install(producer)
        producer._livestream_pending_sends = found
    return found


Headers = list[tuple[str, bytes]]


async def send_batched(
    producer: Any, topic: str, records_by_partition: Mapping[int, Iterable[tuple[bytes | None, bytes | None, Headers]]]
) -> list[asyncio.Future[Any]]:
    """Hand each partition's records to Kafka in as few record batches as the producer's batch size allows (one
    future per batch instead of one per record: a per-record send costs more than the record's processing), in
    order, *uncompressed*, each batch followed by ``producer``'s :class:`PendingSends`; returns the batches' futures
    (resolved when Kafka acknowledged the batch). ``producer`` is faust's; the records get the time they are handed
    over.

    Uncompressed because these are records the worker itself reads back moments later (forwarded copies):
    compressing and decompressing them again costs the worker more CPU than their bytes cost the broker."""
    pending = pending_sends(producer)
    client = producer._ensure_producer()
    accumulator = client._message_accumulator
    transactional = getattr(accumulator._txn_manager, "transactional_id", None) is not None
    futures: list[asyncio.Future[Any]] = []

    def new_batch() -> BatchBuilder:
        return BatchBuilder(accumulator._batch_size, 0, is_transactional=transactional)

    async def submit(batch: BatchBuilder, partition: int) -> None:
        try:
            future = await client.send_batch(batch, topic, partition=partition)
        except Exception as exc:  # refused before it was queued: never delivered
            if pending.failure is None:
                pending.failure = exc
            raise
        pending.track(future)
        futures.append(future)

    for partition, records in records_by_partition.items():
        batch = new_batch()
        for key, value, headers in records:
            if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                await submit(batch, partition)
                batch = new_batch()
                batch.append(timestamp=None, key=key, value=value, headers=headers)  # the first always fits
        if batch.record_count():
            await submit(batch, partition)
    return futures
