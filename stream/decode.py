"""Decoding and validation of raw ``livestream.events`` record values.

:func:`decode_record` turns one Kafka record (key, value) into the channel and its events, or into a
:class:`DeadLetter` that names why it was rejected. Reasons are a closed set (they become a Prometheus label).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from schemas.events import MAX_RECORD_BYTES, Batch, Event, Record

DeadLetterReason = Literal[
    "null_value",
    "oversized",
    "bad_json",
    "schema_invalid",
    "unknown_type",
    "unsupported_version",
    "key_mismatch",
    "mixed_channels",
    "ts_future",
    "ts_past",
]
DEAD_LETTER_REASONS: Final[tuple[DeadLetterReason, ...]] = DeadLetterReason.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: DeadLetterReason
    message: str


@dataclass(frozen=True, slots=True)
class Decoded:
    channel_id: str
    events: list[Event]


@dataclass(frozen=True)
class TimeBounds:
    """Accepted event times, epoch ms: ``[min_ts_ms, max_ts_ms]``; outside them an event is a dead letter."""

    min_ts_ms: int
    max_ts_ms: int


_decoder: Final = msgspec.json.Decoder(Record)


def decode_record(key: bytes | None, value: bytes | None, bounds: TimeBounds) -> Decoded | DeadLetter:
    """Decode one record. The key must be the channel id: it routes all of a channel's events to one partition."""
    if value is None:
        return DeadLetter("null_value", "record value is null")
    if len(value) > MAX_RECORD_BYTES:
        return DeadLetter("oversized", f"record value is {len(value)} bytes, limit {MAX_RECORD_BYTES}")
    try:
        record = _decoder.decode(value)
    except msgspec.ValidationError as exc:
        return DeadLetter(_classify(str(exc)), str(exc))
    except msgspec.DecodeError as exc:
        return DeadLetter("bad_json", str(exc))
    if isinstance(record, Batch):
        channel_id = record.channel_id
        events = record.events
        for event in events:
            if event.channel_id != channel_id:
                return DeadLetter(
                    "mixed_channels", f"event {event.event_id} names {event.channel_id!r} in a batch of {channel_id!r}"
                )
    else:
        channel_id = record.channel_id
        events = [record]
    if key is None or key.decode("utf-8", "replace") != channel_id:
        return DeadLetter("key_mismatch", f"record key {key!r} is not the channel id {channel_id!r}")
    for event in events:
        if event.ts_ms > bounds.max_ts_ms:
            return DeadLetter("ts_future", f"event {event.event_id} at {event.ts_ms} is after {bounds.max_ts_ms}")
        if event.ts_ms < bounds.min_ts_ms:
            return DeadLetter("ts_past", f"event {event.event_id} at {event.ts_ms} is before {bounds.min_ts_ms}")
    return Decoded(channel_id, events)


_TYPE_PATH: Final = re.compile(r"at `\$(\.events\[\d+\])?\.type`$")
_VERSION_PATH: Final = re.compile(r"^Invalid enum value .* at `\$(\.events\[\d+\])?\.v`$")


def _classify(message: str) -> DeadLetterReason:
    if _TYPE_PATH.search(message) or message.endswith("missing required field `type`"):
        return "unknown_type"
    if _VERSION_PATH.search(message):
        return "unsupported_version"
    return "schema_invalid"
