"""Offsets are committed only after Kafka acknowledged every record handed over before them (agents/sends.py).

The producer here behaves as faust's: table writes go into a buffer that a background task hands, one by one and
slowly, to the client, and the client acknowledges later; ``flush()`` returns after 100 ms whatever is queued.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import pytest
from faust.types import TP

from agents.bulk_consumer import Chunk, ChunkProcessor
from agents.sends import SendFailedError

TOPIC = "events"


class LaggingBuffer:
    def __init__(self, producer: LaggingProducer) -> None:
        self.producer = producer
        self.pending: deque[asyncio.Future[Any]] = deque()

    def put(self, fut: asyncio.Future[Any]) -> None:
        self.pending.append(fut)

    @property
    def size(self) -> int:
        return len(self.pending)

    async def flush(self) -> None:  # faust's: gives up after 0.1 s without a record sent
        await asyncio.sleep(0.1)

    async def flush_atmost(self, n: int) -> int:
        await asyncio.sleep(0.1)
        return 0

    async def run(self) -> None:
        while True:
            if self.pending:
                fut = self.pending.popleft()
                acked = await self.producer.send(fut)
                acked.add_done_callback(lambda done, fut=fut: _settle(fut, done))
            await asyncio.sleep(self.producer.lag_s)


def _settle(fut: asyncio.Future[Any], done: asyncio.Future[Any]) -> None:
    if done.exception() is not None:
        fut.set_exception(done.exception())  # type: ignore[arg-type]
    else:
        fut.set_result(done.result())


class LaggingProducer:
    def __init__(self, lag_s: float, fail_after: int | None = None) -> None:
        self.lag_s = lag_s
        self.fail_after = fail_after
        self.buffer = LaggingBuffer(self)
        self.unacked = 0
        self.sent = 0

    async def send(self, fut: Any) -> asyncio.Future[Any]:
        self.sent += 1
        self.unacked += 1
        acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failing = self.fail_after is not None and self.sent > self.fail_after

        def ack() -> None:
            self.unacked -= 1
            if failing:
                acked.set_exception(RuntimeError("MessageSizeTooLarge"))
            else:
                acked.set_result(self.sent)

        asyncio.get_running_loop().call_later(self.lag_s, ack)
        return acked


class Consumer:
    def __init__(self, producer: LaggingProducer) -> None:
        self.producer = producer
        self.commits: list[tuple[dict[TP, int], int, int]] = []

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append((offsets, self.producer.buffer.size, self.producer.unacked))
        return True


class Conf:
    producer_request_timeout = 5.0


class App:
    def __init__(self, producer: LaggingProducer) -> None:
        self.producer = producer
        self.consumer = Consumer(producer)
        self.conf = Conf()


class WritesTables(ChunkProcessor):
    """Each record writes one table row (a changelog record into the producer's buffer)."""

    async def process_chunks(self, chunks: list[Chunk]) -> None:
        loop = asyncio.get_running_loop()
        for chunk in chunks:
            for offset in chunk.records:
                self.app.producer.buffer.put(loop.create_future())
                self.processed[chunk.partition] = offset


async def _run(producer: LaggingProducer) -> tuple[WritesTables, App, asyncio.Task[None]]:
    app = App(producer)
    processor = WritesTables(app, TOPIC, max_buffered=1000, batch_max_records=100, commit_interval_s=60)
    processor.on_assigned({0}, generation=1)
    _ = processor.sends  # as ChunkProcessor.run does before the first batch
    return processor, app, asyncio.ensure_future(producer.buffer.run())


def test_a_lagging_buffer_never_sees_a_commit_while_it_holds_records() -> None:
    async def scenario() -> list[tuple[dict[TP, int], int, int]]:
        producer = LaggingProducer(lag_s=0.02)
        processor, app, sender = await _run(producer)
        try:
            for first in (0, 20):
                await processor.process_chunks([Chunk(0, 1, list(range(first, first + 20)))])
                await processor.commit()
        finally:
            sender.cancel()
        return app.consumer.commits

    commits = asyncio.run(scenario())
    assert [offsets for offsets, _, _ in commits] == [{TP(TOPIC, 0): 20}, {TP(TOPIC, 0): 40}]
    assert all(queued == 0 and unacked == 0 for _, queued, unacked in commits), commits


def test_a_failed_send_stops_the_commit() -> None:
    async def scenario() -> tuple[list[Any], BaseException | None]:
        producer = LaggingProducer(lag_s=0.01, fail_after=5)
        processor, app, sender = await _run(producer)
        error: BaseException | None = None
        try:
            await processor.process_chunks([Chunk(0, 1, list(range(10)))])
            await processor.commit()
        except SendFailedError as exc:
            error = exc
        finally:
            sender.cancel()
        return app.consumer.commits, error

    commits, error = asyncio.run(scenario())
    assert commits == []
    assert error is not None and "MessageSizeTooLarge" in str(error)


def test_records_that_never_settle_stop_the_commit_at_the_deadline() -> None:
    async def scenario() -> list[Any]:
        producer = LaggingProducer(lag_s=0.01)
        processor, app, sender = await _run(producer)
        sender.cancel()  # the buffer's task is gone: nothing queued is ever sent
        app.conf.producer_request_timeout = 0.3
        await processor.process_chunks([Chunk(0, 1, [0, 1])])
        with pytest.raises(SendFailedError, match="not acknowledged"):
            await processor.commit()
        return app.consumer.commits

    assert asyncio.run(scenario()) == []
