"""Go / no-go for exactly-once by Kafka transactions: what aiokafka's transactional producer does on the project's
own broker (``deploy/local/kafka.sh``), checked one property at a time.

- Records of a committed transaction are visible to a ``read_committed`` reader, those of an aborted one are not
  (a ``read_uncommitted`` reader sees both).
- Offsets sent in a transaction (``send_offsets_to_transaction``) become the group's committed offsets when it
  commits, and not when it aborts.
- A second producer with the same transactional id fences the first: the first's open transaction is aborted by
  the broker and its next operation raises ``ProducerFenced``.
- A transaction left open past ``transaction_timeout_ms`` is aborted by the broker; its producer can only fail from
  then on, and a new producer with the same id works.
- A topic that ends in a commit marker (its high watermark one past the last record) is read to its end by a
  ``read_committed`` reader that stops at the last stable offset, in well under a second.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, ProducerFenced

from stream.settings import Settings

pytestmark = pytest.mark.services

PARTITIONS = 2


def _kafka() -> dict[str, Any]:
    return Settings().kafka_client_options()


async def _new_topic(partitions: int = PARTITIONS) -> str:
    topic = f"txn-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(**_kafka())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def _producer(transactional_id: str, **more: Any) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(**_kafka(), transactional_id=transactional_id, **more)
    await producer.start()
    return producer


async def _read_all(topic: str, isolation_level: str, timeout_s: float = 10.0) -> list[bytes]:
    """Every value of ``topic`` a reader with ``isolation_level`` returns, up to the end it can reach (the last
    stable offset for ``read_committed``)."""
    consumer = AIOKafkaConsumer(
        **_kafka(), isolation_level=isolation_level, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)  # the LSO for read_committed, the HW for read_uncommitted
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while not await _at_end(consumer, ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"not at the end of {topic} after {timeout_s} s")
            batch = await consumer.getmany(timeout_ms=200)
            values += [record.value for records in batch.values() for record in records if record.value]
        return values
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    return all([await consumer.position(tp) >= end for tp, end in ends.items()])


async def _raises_fenced(operation: Callable[[], Awaitable[Any]]) -> KafkaError:
    with pytest.raises(KafkaError) as caught:
        await operation()
    return caught.value


@pytest.fixture
def topic(services: None) -> str:
    return asyncio.run(_new_topic())


def test_committed_records_are_visible_to_read_committed_readers_and_aborted_ones_are_not(topic: str) -> None:
    async def run() -> tuple[list[bytes], list[bytes]]:
        producer = await _producer(f"go-{uuid.uuid4().hex}")
        try:
            for n in range(6):
                async with producer.transaction():
                    for partition in range(PARTITIONS):
                        await producer.send(topic, f"committed-{n}-{partition}".encode(), partition=partition)
                await producer.begin_transaction()
                for partition in range(PARTITIONS):
                    await producer.send(topic, f"aborted-{n}-{partition}".encode(), partition=partition)
                await producer.flush()  # on the broker, inside the open transaction
                await producer.abort_transaction()
        finally:
            await producer.stop()
        return await _read_all(topic, "read_committed"), await _read_all(topic, "read_uncommitted")

    committed, uncommitted = asyncio.run(run())
    expected = {f"committed-{n}-{p}".encode() for n in range(6) for p in range(PARTITIONS)}
    assert sorted(committed) == sorted(expected), "read_committed: exactly the committed records, each once"
    assert {v for v in uncommitted if v.startswith(b"aborted")} == {
        f"aborted-{n}-{p}".encode() for n in range(6) for p in range(PARTITIONS)
    }, "read_uncommitted sees the aborted records too: readers of our topics must read committed"


def test_offsets_sent_in_a_transaction_are_the_groups_committed_offsets_only_once_it_commits(topic: str) -> None:
    group = f"go-group-{uuid.uuid4().hex[:8]}"

    async def committed_offsets() -> dict[int, int | None]:
        consumer = AIOKafkaConsumer(**_kafka(), group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
        finally:
            await consumer.stop()

    async def run() -> tuple[dict[int, int | None], dict[int, int | None]]:
        producer = await _producer(f"go-{uuid.uuid4().hex}")
        try:
            async with producer.transaction():
                await producer.send(topic, b"out", partition=0)
                offsets = {TopicPartition(topic, 0): 17, TopicPartition(topic, 1): 4}
                await producer.send_offsets_to_transaction(offsets, group)
            after_commit = await committed_offsets()
            await producer.begin_transaction()
            await producer.send(topic, b"out", partition=0)
            offsets = {TopicPartition(topic, 0): 99, TopicPartition(topic, 1): 99}
            await producer.send_offsets_to_transaction(offsets, group)
            await producer.abort_transaction()
            after_abort = await committed_offsets()
        finally:
            await producer.stop()
        return after_commit, after_abort

    after_commit, after_abort = asyncio.run(run())
    assert after_commit == {0: 17, 1: 4}
    assert after_abort == {0: 17, 1: 4}, "an aborted transaction's offsets are never the group's"


def test_a_second_producer_with_the_same_id_fences_the_first_and_aborts_its_open_transaction(topic: str) -> None:
    transactional_id = f"go-{uuid.uuid4().hex}"

    async def run() -> tuple[KafkaError, list[bytes]]:
        zombie = await _producer(transactional_id)
        await zombie.begin_transaction()
        await zombie.send(topic, b"zombie", partition=0)
        await zombie.flush()
        successor = await _producer(transactional_id)  # InitProducerId: bumps the epoch, aborts the open one
        try:
            async with successor.transaction():
                await successor.send(topic, b"successor", partition=0)

            async def zombie_commits() -> None:
                await zombie.send(topic, b"zombie again", partition=0)
                await zombie.commit_transaction()

            error = await _raises_fenced(zombie_commits)
        finally:
            await successor.stop()
            await zombie.stop()
        return error, await _read_all(topic, "read_committed")

    error, committed = asyncio.run(run())
    assert isinstance(error, ProducerFenced), repr(error)
    assert committed == [b"successor"], "the fenced producer's records are never committed"


def test_a_transaction_left_open_past_its_timeout_is_aborted_and_a_new_producer_works(topic: str) -> None:
    transactional_id = f"go-{uuid.uuid4().hex}"

    async def run() -> tuple[KafkaError, list[bytes]]:
        stalled = await _producer(transactional_id, transaction_timeout_ms=1_000)
        try:
            await stalled.begin_transaction()
            await stalled.send(topic, b"stalled", partition=1)
            await stalled.flush()
            # The coordinator aborts expired transactions every transaction.abort.timed.out.transaction.cleanup
            # .interval.ms (10 s by default).
            await asyncio.sleep(12)
            error = await _raises_fenced(stalled.commit_transaction)
        finally:
            await stalled.stop()
        fresh = await _producer(transactional_id)
        try:
            async with fresh.transaction():
                await fresh.send(topic, b"fresh", partition=1)
        finally:
            await fresh.stop()
        return error, await _read_all(topic, "read_committed")

    error, committed = asyncio.run(run())
    assert isinstance(error, KafkaError), repr(error)
    assert committed == [b"fresh"], "the timed-out transaction was aborted by the broker"


def test_a_topic_ending_in_a_commit_marker_is_read_to_its_end_at_once(topic: str) -> None:
    """Faust's table recovery waits until its position reaches the changelog's end; a transactional changelog ends
    in a commit marker, one offset past the last record. A ``read_committed`` reader's end is the last stable
    offset, and its position moves past the marker: reading such a topic to its end takes no timeout."""

    async def run() -> tuple[float, dict[TopicPartition, int], dict[TopicPartition, int]]:
        producer = await _producer(f"go-{uuid.uuid4().hex}")
        try:
            async with producer.transaction():
                for n in range(500):
                    await producer.send(topic, f"row-{n}".encode(), key=f"k{n % 50}".encode(), partition=n % PARTITIONS)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(**_kafka(), isolation_level="read_committed", enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            started = time.monotonic()
            seen = 0
            while not await _at_end(consumer, ends):
                batch = await consumer.getmany(timeout_ms=100)
                seen += sum(len(records) for records in batch.values())
                assert time.monotonic() - started < 5, "stuck before the commit marker"
            elapsed = time.monotonic() - started
            assert seen == 500
            positions = {tp: await consumer.position(tp) for tp in parts}
        finally:
            await consumer.stop()
        return elapsed, ends, positions

    elapsed, ends, positions = asyncio.run(run())
    assert all(ends[tp] == 250 + 1 for tp in ends), f"each partition ends one past its 250 records (the marker): {ends}"
    assert positions == ends
    assert elapsed < 1.0, f"read to the end in {elapsed:.2f} s"
