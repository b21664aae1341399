"""The transport ceiling: a raw aiokafka consumer that reads every prefilled record of a topic and counts it.

No consumer group, no decoding, no commits: partitions are assigned and read from the beginning until each
reaches the end offset it had when the topic was filled. Run as a child process of the benchmark::

    python -m livestream.bench.drain --bootstrap H:P --topic T --ends '{"0": N, ...}' --result out.json
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from livestream.bench.common import ChildResult, PartitionTally, json_arg
from stream.settings import Settings


async def drain(kafka: Mapping[str, Any], topic: str, ends: dict[int, int]) -> ChildResult:
    consumer = AIOKafkaConsumer(
        **kafka,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    tally = PartitionTally(ends)
    first_t = first_cpu = 0.0
    last_t = last_cpu = 0.0
    in_hand = total = 0
    try:
        tps = [TopicPartition(topic, p) for p in sorted(ends)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not tally.done:
            batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            now, cpu = time.monotonic(), time.process_time()
            for tp, records in batches.items():
                end = ends[tp.partition]
                below = [r for r in records if r.offset < end] if records[-1].offset >= end else records
                if below:
                    tally.add(tp.partition, len(below), below[-1].offset)
                    total += len(below)
            if not first_t and total:
                first_t, first_cpu, in_hand = now, cpu, total
            last_t, last_cpu = now, cpu
    finally:
        await consumer.stop()
    counts, highest = tally.as_json()
    return ChildResult(total - in_hand, last_t - first_t, last_cpu - first_cpu, total, counts, highest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--ends", required=True, help="JSON: partition -> end offset to read up to")
    parser.add_argument("--result", required=True, type=Path)
    args = parser.parse_args()
    # Security settings (LIVESTREAM_KAFKA_SECURITY_PROTOCOL, ...) come from the environment the runner passed on.
    kafka = Settings(**{"kafka_bootstrap": args.bootstrap}).kafka_client_options()
    asyncio.run(drain(kafka, args.topic, json_arg(args.ends))).write(args.result)


if __name__ == "__main__":
    main()
