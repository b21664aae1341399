"""Dead letters: records that cannot be decoded or validated go to ``<namespace>.dlq`` unchanged.

Headers carry the reason (``error``), the message, and the source coordinates (topic, partition, offset), so a
record can be inspected and, once fixed, re-injected with ``livestream dlq replay``.
"""

from __future__ import annotations

from typing import Any

from stream.decode import DeadLetter


def dead_letter_headers(topic: str, partition: int, offset: int, letter: DeadLetter) -> list[tuple[str, bytes]]:
    return [
        ("error", letter.reason.encode()),
        ("error_message", letter.message[:1000].encode()),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
    ]


async def send_dead_letter(
    dlq: Any, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int, letter: DeadLetter
) -> None:
    """Publish the original record with its error headers (flushed before the offset commit)."""
    await dlq.send(key=key, value=value, headers=dead_letter_headers(topic, partition, offset, letter))
