"""``livestream dlq inspect|replay``: look at dead letters and re-inject them once the cause is fixed."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


@dataclass(frozen=True)
class DeadLetterRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    def summary(self, width: int = 80) -> dict[str, object]:
        preview = "" if self.value is None else self.value[:width].decode("utf-8", "replace")
        return {
            "dlq_offset": self.offset,
            "error": self.headers.get("error", ""),
            "message": self.headers.get("error_message", ""),
            "source": f"{self.headers.get('source_topic', '?')}[{self.headers.get('source_partition', '?')}]"
            f"@{self.headers.get('source_offset', '?')}",
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
            "value": preview,
            "bytes": 0 if self.value is None else len(self.value),
        }


async def read_dead_letters(bootstrap: str, topic: str, reason: str | None = None) -> list[DeadLetterRecord]:
    """Every record of the dead-letter topic (optionally only one ``error`` reason), oldest first."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=16 * 1024 * 1024
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, starts[tp])
        out: list[DeadLetterRecord] = []
        deadline = time.monotonic() + 60
        while any([await consumer.position(tp) < ends[tp] for tp in tps]) and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500, max_records=5000)).items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    headers = {k: bytes(v).decode("utf-8", "replace") for k, v in r.headers}
                    if reason is None or headers.get("error") == reason:
                        out.append(DeadLetterRecord(r.partition, r.offset, r.key, r.value, headers))
        return sorted(out, key=lambda d: (d.partition, d.offset))
    finally:
        await consumer.stop()


async def replay_dead_letters(bootstrap: str, records: list[DeadLetterRecord], events_topic: str) -> int:
    """Produce the original records back to the events topic (same key and value); returns how many."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, max_request_size=8_388_608)
    await producer.start()
    try:
        for record in records:
            headers = [("replayed_from_dlq_offset", str(record.offset).encode())]
            await producer.send_and_wait(events_topic, record.value, key=record.key, headers=headers)
        return len(records)
    finally:
        await producer.stop()
