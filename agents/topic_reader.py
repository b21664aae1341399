"""Reading a topic (or some of its partitions) from its beginning to its end at the time of the call."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_to_end(
    kafka: Mapping[str, Any], topic: str, partitions: set[int] | None = None, timeout_s: float = 60.0
) -> list[Any]:
    """Every record (aiokafka ``ConsumerRecord``) below the end offsets seen at the start, by partition and offset.

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
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        remaining = {tp for tp in tps if ends[tp] > starts[tp]}
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s:.0f} s")
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=20_000)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < ends[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


async def read_range(kafka: Mapping[str, Any], topic: str, partition: int, start: int, end: int) -> list[Any]:
    """Records ``start <= offset < end`` of one partition (fewer if some were deleted by retention)."""
    consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False, max_partition_fetch_bytes=16 * 1024 * 1024)
    try:
        await consumer.start()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        first = (await consumer.beginning_offsets([tp]))[tp]
        consumer.seek(tp, max(start, first))
        out: list[Any] = []
        deadline = time.monotonic() + 60
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic}[{partition}] {start}..{end}")
            for records in (await consumer.getmany(tp, timeout_ms=500, max_records=20_000)).values():
                out.extend(r for r in records if r.offset < end)
        return out
    finally:
        await consumer.stop()
