"""Dead letters: records that cannot be decoded or validated go to ``<namespace>.dlq``.

The dead letter carries the original key, value and headers, plus headers for the reason (``error``), the message
and the source coordinates (``source_topic``, ``source_partition``, ``source_offset``; ``source_event_index`` for
one rejected event of an envelope, whose own JSON is then the value), so a record can be inspected and, once fixed,
re-injected with ``livestream dlq replay``. A value larger than :data:`MAX_DEAD_LETTER_BYTES` (it passed the
broker compressed) is cut to that size and marked with ``truncated_from`` = its original size.
"""

from __future__ import annotations

from typing import Any

from stream.decode import DeadLetter

MAX_DEAD_LETTER_BYTES = 1024 * 1024
ERROR_HEADERS = frozenset(
    {"error", "error_message", "source_topic", "source_partition", "source_offset", "source_event_index"}
)


def dead_letter_headers(
    topic: str, partition: int, offset: int, letter: DeadLetter, index: int | None = None
) -> list[tuple[str, bytes]]:
    headers = [
        ("error", letter.reason.encode()),
        ("error_message", letter.message[:1000].encode()),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
    ]
    if index is not None:
        headers.append(("source_event_index", str(index).encode()))
    return headers


async def send_dead_letter(
    dlq: Any, record: Any, topic: str, letter: DeadLetter, index: int | None = None, raw: bytes | None = None
) -> None:
    """Publish ``record`` (or, with ``index``, its rejected event ``raw``) with its error headers; flushed before
    the offset commit."""
    value: bytes | None = raw if index is not None else record.value
    headers = [(k, v) for k, v in (record.headers or ()) if k not in ERROR_HEADERS]
    headers += dead_letter_headers(topic, record.partition, record.offset, letter, index)
    if value is not None and len(value) > MAX_DEAD_LETTER_BYTES:
        headers.append(("truncated_from", str(len(value)).encode()))
        value = value[:MAX_DEAD_LETTER_BYTES]
    await dlq.send(key=record.key, value=value, headers=headers)
