"""``livestream dlq inspect|replay``: look at dead letters and re-inject them once the cause is fixed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from agents.topic_reader import read_to_end


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


async def read_dead_letters(kafka: Mapping[str, Any], topic: str, reason: str | None = None) -> list[DeadLetterRecord]:
    """Every record of the dead-letter topic (optionally only one ``error`` reason), oldest first."""
    out: list[DeadLetterRecord] = []
    for r in await read_to_end(kafka, topic):
        headers = {k: bytes(v).decode("utf-8", "replace") for k, v in r.headers}
        if reason is None or headers.get("error") == reason:
            out.append(DeadLetterRecord(r.partition, r.offset, r.key, r.value, headers))
    return out


async def replay_dead_letters(kafka: Mapping[str, Any], records: list[DeadLetterRecord], events_topic: str) -> int:
    """Produce the original records back to the events topic (same key and value); returns how many."""
    producer = AIOKafkaProducer(**kafka, enable_idempotence=True, max_request_size=8_388_608)
    await producer.start()
    try:
        for record in records:
            headers = [("replayed_from_dlq_offset", str(record.offset).encode())]
            await producer.send_and_wait(events_topic, record.value, key=record.key, headers=headers)
        return len(records)
    finally:
        await producer.stop()
