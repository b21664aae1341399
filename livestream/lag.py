"""Consumer lag of the worker group on the events topic, read from Kafka: end offset minus committed offset.

This is the group's view (what is committed), for every partition of the topic whoever owns it; a worker's own
``livestream_consumer_lag_records`` gauge is what it has not processed yet of the partitions it owns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def partition_lag(kafka: Mapping[str, Any], group: str, topic: str) -> dict[int, tuple[int, int, int]]:
    """Every partition of ``topic`` -> ``(end offset, committed offset or -1, lag)``.

    A partition ``group`` has not committed yet counts its lag from its beginning offset (records removed by
    retention were never there to process), so a new group on a topic with records shows them as lag, not 0.
    An unknown topic gives ``{}``.
    """
    consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(**kafka)
    await consumer.start()
    try:
        await admin.start()
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                return {}
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            lags: dict[int, tuple[int, int, int]] = {}
            for tp in tps:
                meta = committed.get(tp)
                offset = meta.offset if meta is not None and meta.offset >= 0 else -1
                # A committed offset below the beginning (records deleted by retention) counts from the beginning.
                done = max(offset, begins[tp])
                lags[tp.partition] = (ends[tp], offset, max(0, ends[tp] - done))
            return lags
        finally:
            await admin.close()
    finally:
        await consumer.stop()


async def consumer_lag(kafka: Mapping[str, Any], group: str, topic: str) -> int:
    """Total records of ``topic`` not yet committed by ``group`` (:func:`partition_lag` summed)."""
    return sum(lag for _, _, lag in (await partition_lag(kafka, group, topic)).values())
