"""Dead letters: records that cannot be decoded or validated go to ``<namespace>.dlq`` unchanged.

Headers carry the reason (``error``), the message, and the source coordinates (topic, partition, offset), so a
record can be inspected and, once fixed, re-injected with ``livestream dlq replay``.
"""

from __future__ import annotations

from typing import Any

from faust.types import EventT

from stream.decode import DeadLetter


def dead_letter_headers(event: EventT, letter: DeadLetter) -> list[tuple[str, bytes]]:
    message = event.message
    return [
        ("error", letter.reason.encode()),
        ("error_message", letter.message[:1000].encode()),
        ("source_topic", message.topic.encode()),
        ("source_partition", str(message.partition).encode()),
        ("source_offset", str(message.offset).encode()),
    ]


async def send_dead_letter(topic: Any, event: EventT, letter: DeadLetter) -> None:
    """Publish the original record with its error headers (buffered; flushed before the offset commit)."""
    message = event.message
    await topic.send(key=message.key, value=message.value, headers=dead_letter_headers(event, letter))
