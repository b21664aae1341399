"""Dead letters: records that cannot be decoded or validated go to ``<namespace>.dlq``.

The dead letter carries the original key, value and headers, plus headers for the reason (``error``), the message
and the source coordinates (``source_topic``, ``source_partition``, ``source_offset``; ``source_event_index`` for
one rejected event of an envelope, whose own JSON is then the value; for a copy forwarded to its key's partition,
the original record, with ``copy_partition`` and ``copy_offset`` naming the copy), so a record can be inspected
and, once fixed, re-injected with ``livestream dlq replay``.

A dead letter always fits a broker with Kafka's default ``message.max.bytes`` (1,048,588), whatever the record it
stands for (which may have passed the broker compressed, or a broker with a higher limit): key, value and headers
together stay within :data:`DEAD_LETTER_BUDGET_BYTES`. Original headers beyond :data:`MAX_KEPT_HEADER_BYTES` are
dropped (``headers_dropped`` = how many), a key over :data:`MAX_KEY_BYTES` is cut (``key_truncated_from`` = its
size), and the value is cut to what is left (``truncated_from`` = its original size).
"""

from __future__ import annotations

from typing import Any

from stream.decode import DeadLetter
from stream.fold import FORWARDED_HEADER

"""On a copy forwarded to its key's partition: ``<partition>@<offset>`` of the original record in the same topic."""

DEAD_LETTER_BUDGET_BYTES = 1_000_000
"""Key + value + header bytes of one dead letter: under a default broker's 1,048,588 with room for the batch."""
MAX_KEPT_HEADER_BYTES = 64 * 1024
MAX_KEY_BYTES = 64 * 1024
ERROR_HEADERS = frozenset(
    {
        "error",
        "error_message",
        "source_topic",
        "source_partition",
        "source_offset",
        "source_event_index",
        "copy_partition",
        "copy_offset",
        FORWARDED_HEADER,
    }
)
"""Headers the worker adds; a source record's own headers of these names are not carried into its dead letter."""


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


def dead_letter(
    record: Any, topic: str, letter: DeadLetter, index: int | None = None, raw: bytes | None = None
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of the dead letter for ``record`` (or, with ``index``, its rejected event ``raw``),
    within :data:`DEAD_LETTER_BUDGET_BYTES` (see the module)."""
    value: bytes | None = raw if index is not None else record.value
    key: bytes | None = record.key
    original = forwarded_from(record.headers)
    if original is None:
        headers = dead_letter_headers(topic, record.partition, record.offset, letter, index)
    else:  # a forwarded copy: name the record the producer wrote, and the copy
        headers = dead_letter_headers(topic, original[0], original[1], letter, index)
        headers += [("copy_partition", str(record.partition).encode()), ("copy_offset", str(record.offset).encode())]
    kept: list[tuple[str, bytes]] = []
    kept_bytes = 0
    dropped = 0
    for name, header_value in record.headers or ():
        if name in ERROR_HEADERS:
            continue
        size = len(name) + len(header_value or b"")
        if kept_bytes + size > MAX_KEPT_HEADER_BYTES:
            dropped += 1
            continue
        kept.append((name, header_value))
        kept_bytes += size
    headers = kept + headers
    if dropped:
        headers.append(("headers_dropped", str(dropped).encode()))
    if key is not None and len(key) > MAX_KEY_BYTES:
        headers.append(("key_truncated_from", str(len(key)).encode()))
        key = key[:MAX_KEY_BYTES]
    if value is not None:
        room = DEAD_LETTER_BUDGET_BYTES - len(key or b"") - sum(len(k) + len(v or b"") for k, v in headers) - 64
        if len(value) > room:
            headers.append(("truncated_from", str(len(value)).encode()))
            value = value[: max(0, room)]
    return key, value, headers


def forwarded_from(headers: Any) -> tuple[int, int] | None:
    """(partition, offset) of the original of a forwarded copy, from its :data:`FORWARDED_HEADER` (None if absent
    or unreadable)."""
    for name, value in headers or ():
        if name == FORWARDED_HEADER:
            fields = (value or b"").split(b"@")
            try:
                return int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                return None
    return None


async def send_dead_letter(
    dlq: Any, record: Any, topic: str, letter: DeadLetter, index: int | None = None, raw: bytes | None = None
) -> Any:
    """Publish the dead letter of ``record``; returns the pending send (a commit waits for it)."""
    key, value, headers = dead_letter(record, topic, letter, index, raw)
    return await dlq.send(key=key, value=value, headers=headers, force=True)
