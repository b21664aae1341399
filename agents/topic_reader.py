"""Reading a topic (or some of its partitions) from its beginning to its end at the time of the call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


async def stream_to_end(
    kafka: Mapping[str, Any], topic: str, partitions: set[int] | None = None, stall_timeout_s: float = 60.0
) -> AsyncIterator[list[Any]]:
    """Every record (aiokafka ``ConsumerRecord``) below the end offsets seen at the start, fetch by fetch, each
    partition in offset order: memory is what the caller keeps, and time is bounded by progress (an error only
    when no record arrived for ``stall_timeout_s``), not by the topic's size.

    ``kafka``: the aiokafka client options (bootstrap servers and security), ``Settings.kafka_client_options()``.

    Seeks explicitly to the beginning offsets: a lazy ``seek_to_beginning`` can lose to the default offset reset.
    """
    consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False, max_partition_fetch_bytes=16 * 1024 * 1024)
    try:
        await consumer.start()
        if partitions is None:  # learn the topic's partitions (a metadata request for every topic of the cluster)
            await consumer._client.force_metadata_update()
            known = consumer.partitions_for_topic(topic) or set()
        else:
            known = set(partitions)
        tps = [TopicPartition(topic, p) for p in sorted(known)]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        remaining = {tp for tp in tps if ends[tp] > starts[tp]}
        deadline = time.monotonic() + stall_timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} to its end: no record for {stall_timeout_s:.0f} s")
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=20_000)
            for tp, records in batch.items():
                wanted = [r for r in records if r.offset < ends[tp]]
                if wanted:
                    deadline = time.monotonic() + stall_timeout_s
                    yield wanted
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def read_to_end(
    kafka: Mapping[str, Any], topic: str, partitions: set[int] | None = None, timeout_s: float = 60.0
) -> list[Any]:
    """Every record below the end offsets seen at the start, by partition and offset, in one list (for tools and
    tests; the worker streams with :func:`stream_to_end`)."""
    out: list[Any] = []
    async for records in stream_to_end(kafka, topic, partitions, timeout_s):
        out.extend(records)
    return sorted(out, key=lambda r: (r.partition, r.offset))


async def stream_range(
    kafka: Mapping[str, Any],
    topic: str,
    partition: int,
    start: int,
    end: int,
    max_records: int = 20_000,
    stall_timeout_s: float = 60.0,
) -> AsyncIterator[list[Any]]:
    """Records ``start <= offset < end`` of one partition (fewer if some were deleted by retention), in offset
    order, in pages of at most ``max_records``: memory is one page, and time is bounded by progress (an error only
    when no record arrived for ``stall_timeout_s``), not by the length of the range."""
    consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False, max_partition_fetch_bytes=16 * 1024 * 1024)
    try:
        await consumer.start()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        consumer.seek(tp, max(start, first))
        deadline = time.monotonic() + stall_timeout_s
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"could not read {topic}[{partition}] {start}..{end}: no record for {stall_timeout_s:.0f} s"
                )
            for records in (await consumer.getmany(tp, timeout_ms=500, max_records=max_records)).values():
                wanted = [r for r in records if r.offset < end]
                if wanted:
                    deadline = time.monotonic() + stall_timeout_s
                    yield wanted
    finally:
        await consumer.stop()


async def read_range(kafka: Mapping[str, Any], topic: str, partition: int, start: int, end: int) -> list[Any]:
    """Records ``start <= offset < end`` of one partition in one list (for short ranges; see :func:`stream_range`)."""
    out: list[Any] = []
    async for records in stream_range(kafka, topic, partition, start, end):
        out.extend(records)
    return out
