"""Decoding and validation of raw ``livestream.events`` record values.

:func:`decode_record` turns one Kafka record (key, value) into the channel and its events (:class:`Decoded`), or
into a :class:`DeadLetter` that names why the whole record was rejected. It is total: no input raises out of it
(a last-resort handler turns any unexpected failure into a ``bad_json`` dead letter).

The contract is the JSON Schema in ``schemas/json/`` (generated from ``schemas/events.py``) plus the rules no
schema keyword can express (``schemas.events.RECORD_RULES``):

- The value is UTF-8 JSON text, at most ``MAX_RECORD_BYTES`` bytes and at most ``MAX_JSON_DEPTH`` levels deep
  (every array and object counts, unknown fields included; a single event is 1 level, an envelope 3). Both limits
  are checked before decoding: n bytes ``[`` or ``{`` cannot nest deeper than n, which vouches for a single event;
  other records get an exact count of the nesting outside strings (:func:`_too_deep`), except an envelope with one
  ``[``, whose count of ``{`` is compared with its number of events once decoded (one more: none is nested; the
  decoder's own recursion guard bounds that decode). Bytes of fields the decoder skips are not checked for UTF-8.
- Integer fields are written as JSON integer literals. ``100000.0`` or ``1.7e12`` for an integer field is
  ``schema_invalid``, although JSON Schema's ``"integer"`` (which judges the value, not how it is written) admits
  it: the generated schema states the rule in each integer field's description. Money and event times are exact
  integers; a producer that writes them as floats has already lost that guarantee once they exceed 2**53.
- The Kafka key is the UTF-8 bytes of ``channel_id`` (it routes a channel's events to one partition).
- Unknown fields are ignored (forward compatibility).

A batch envelope whose envelope-level fields are valid (``type``, ``v``, ``channel_id``, ``events`` a list of 1 to
``MAX_BATCH_EVENTS`` items, key = ``channel_id``) decodes even if some of its events do not: those are
:class:`RejectedEvent` entries of :attr:`Decoded.rejected` (index, reason, message and the event's own JSON
bytes), for the caller to send to the dead-letter topic one by one; the valid events stay in
:attr:`Decoded.events`, in order. Rejected events are found by decoding the envelope's events as raw JSON and then
each event on its own; an envelope whose events are all valid takes the one-pass decode.

Reasons (a closed set: they become a Prometheus label; "event" reasons also apply to one event of an envelope):

- ``null_value``: the record value is null (a tombstone).
- ``oversized``: the value is longer than ``MAX_RECORD_BYTES``.
- ``too_deep``: the JSON nests deeper than ``MAX_JSON_DEPTH`` levels, strings excluded.
- ``bad_encoding``: the value is not UTF-8 text: a string holds an invalid UTF-8 sequence, or the value starts with
  a byte-order mark, looks like UTF-16/32, or is not UTF-8 and is not valid JSON (event reason too).
- ``bad_json``: the value is not valid JSON (an unpaired UTF-16 surrogate escape such as ``"\\ud800"`` included,
  even inside one event of an envelope), or the decoder failed in an unexpected way (the last resort; its message
  names the exception).
- ``schema_invalid``: valid JSON that does not match the schema: a missing or mistyped field, a bound or length
  exceeded, an integral float for an integer (event reason too).
- ``unknown_type``: ``type`` is missing or names no known event or envelope (event reason too).
- ``unsupported_version``: ``v`` is not a supported schema version (event reason too).
- ``key_mismatch``: the record key is not the UTF-8 of the record's (or envelope's) ``channel_id``.
- ``mixed_channels``: an event of an envelope names another ``channel_id`` than its envelope (event reason only).
- ``ts_future``: the event time is after :attr:`TimeBounds.max_ts_ms` (event reason too).
- ``ts_past``: the event time is before :attr:`TimeBounds.min_ts_ms` (event reason too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec

from schemas.events import MAX_BATCH_EVENTS, MAX_JSON_DEPTH, MAX_RECORD_BYTES, Batch, Event, NonEmpty, Record

DeadLetterReason = Literal[
    "null_value",
    "oversized",
    "too_deep",
    "bad_encoding",
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


class DeadLetter(msgspec.Struct, frozen=True):
    """A whole record rejected: it goes to the dead-letter topic unchanged."""

    reason: DeadLetterReason
    message: str


class RejectedEvent(msgspec.Struct, frozen=True):
    """One event of a batch envelope that failed validation; the envelope's other events are kept."""

    index: int
    """Position of the event in the envelope's ``events``."""
    reason: DeadLetterReason
    message: str
    raw: bytes
    """The event's own JSON bytes, as they appear in the envelope."""


class Decoded(msgspec.Struct, frozen=True):
    """A record's channel and its valid events, in record order (none if every event of an envelope was rejected)."""

    channel_id: str
    events: list[Event]
    rejected: list[RejectedEvent] = []
    """Events of an envelope that failed validation, in envelope order; empty for a single event."""


@dataclass(frozen=True)
class TimeBounds:
    """Accepted event times, epoch ms: ``[min_ts_ms, max_ts_ms]``; outside them an event is a dead letter."""

    min_ts_ms: int
    max_ts_ms: int


class _RawBatch(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="batch"):
    """:class:`schemas.events.Batch` with its events left undecoded, to decode (and reject) them one by one."""

    v: Literal[1] = 1
    channel_id: NonEmpty
    events: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=MAX_BATCH_EVENTS)]


_decoder: Final = msgspec.json.Decoder(Record)
_raw_decoder: Final = msgspec.json.Decoder(Event | _RawBatch)
_event_decoder: Final = msgspec.json.Decoder(Event)


def decode_record(key: bytes | None, value: bytes | None, bounds: TimeBounds) -> Decoded | DeadLetter:
    """Decode one record. The key must be the channel id: it routes all of a channel's events to one partition."""
    if value is None:
        return DeadLetter("null_value", "record value is null")
    try:
        if len(value) > MAX_RECORD_BYTES:
            return DeadLetter("oversized", f"record value is {len(value)} bytes, limit {MAX_RECORD_BYTES}")
        # Nesting, before decoding: n arrays and objects nest at most n deep. A single event has one '{' and no
        # '['; a flat envelope one '[' and one '{' more than its events, which is vouched for once they are counted.
        curly = value.count(b"{")
        square = value.find(b"[")
        deferred = False
        if square >= 0 or curly > MAX_JSON_DEPTH:
            if square >= 0 and curly >= MAX_JSON_DEPTH and value.rfind(b"[") == square:
                deferred = True
            elif curly + value.count(b"[") > MAX_JSON_DEPTH and _too_deep(value):
                return _TOO_DEEP
        try:
            record: Record = _decoder.decode(value)
        except (msgspec.DecodeError, UnicodeDecodeError):  # ValidationError included
            if deferred and _too_deep(value):
                return _TOO_DEEP
            return _decode_by_event(key, value, bounds)
        except RecursionError:
            return _TOO_DEEP
        if isinstance(record, Batch):
            if deferred and curly != len(record.events) + 1 and _too_deep(value):
                return _TOO_DEEP
            return _check_batch(key, value, record, bounds)
        if deferred and _too_deep(value):
            return _TOO_DEEP
        channel_id = record.channel_id
        if key != channel_id.encode():
            return DeadLetter("key_mismatch", f"record key {key!r} is not the channel id {channel_id!r}")
        if not bounds.min_ts_ms <= record.ts_ms <= bounds.max_ts_ms:
            return _single_event(key, record, bounds)  # the dead letter that says which bound
        return Decoded(channel_id, [record])
    except Exception as exc:  # the last resort: whatever the record holds, the worker must not stop on it
        return DeadLetter("bad_json", f"undecodable record ({type(exc).__name__}: {exc})")


def decode_event(value: bytes, bounds: TimeBounds, max_depth: int = MAX_JSON_DEPTH) -> Event | DeadLetter:
    """Decode one event on its own (a batch envelope is ``unknown_type`` here), with the checks :func:`decode_record`
    makes of a single-event record except the key: size, nesting (at most ``max_depth`` levels), schema, time bounds.

    For producers that pack events into envelopes themselves (the ingestion gateway): an envelope nests its events
    2 levels deeper, so they pass ``MAX_JSON_DEPTH - 2``. Total, like :func:`decode_record`.
    """
    try:
        if len(value) > MAX_RECORD_BYTES:
            return DeadLetter("oversized", f"event is {len(value)} bytes, limit {MAX_RECORD_BYTES}")
        if value.count(b"{") + value.count(b"[") > max_depth and _too_deep(value, max_depth):
            return DeadLetter("too_deep", f"JSON nested deeper than {max_depth} levels")
        try:
            event: Event = _event_decoder.decode(value)
        except msgspec.ValidationError as exc:
            return DeadLetter(_classify(str(exc)), str(exc))
        except msgspec.DecodeError as exc:
            return DeadLetter(_malformed(value), str(exc))
        except UnicodeDecodeError as exc:
            return DeadLetter("bad_encoding", f"invalid UTF-8 in a string: {exc}")
        except RecursionError:
            return DeadLetter("too_deep", f"JSON nested deeper than {max_depth} levels")
        problem = _time_problem(event, bounds)
        return event if problem is None else DeadLetter(*problem)
    except Exception as exc:  # the last resort, as in decode_record
        return DeadLetter("bad_json", f"undecodable event ({type(exc).__name__}: {exc})")


def _check_batch(key: bytes | None, value: bytes, batch: Batch, bounds: TimeBounds) -> Decoded | DeadLetter:
    """A one-pass decoded envelope: every event valid (the usual case), or find the raw bytes of the rejected ones."""
    channel_id = batch.channel_id
    if key != channel_id.encode():
        return DeadLetter("key_mismatch", f"record key {key!r} is not the channel id {channel_id!r}")
    events = batch.events
    min_ts, max_ts = bounds.min_ts_ms, bounds.max_ts_ms
    for event in events:
        if event.channel_id != channel_id or not min_ts <= event.ts_ms <= max_ts:
            break
    else:
        return Decoded(channel_id, events)
    envelope: _RawBatch = _raw_decoder.decode(value)  # the same envelope, its events left raw
    raws = envelope.events
    kept: list[Event] = []
    rejected: list[RejectedEvent] = []
    for index, event in enumerate(events):
        problem = _event_problem(event, channel_id, bounds)
        if problem is None:
            kept.append(event)
        else:
            rejected.append(RejectedEvent(index, problem[0], problem[1], bytes(raws[index])))
    return Decoded(channel_id, kept, rejected)


def _decode_by_event(key: bytes | None, value: bytes, bounds: TimeBounds) -> Decoded | DeadLetter:
    """Decode an envelope's events one by one, so that a bad event rejects only itself; any other record whole.

    The one-pass decode of ``value`` failed (or is not trusted): a single event fails here the same way, an envelope
    fails here only on its envelope-level fields.
    """
    try:
        record: Event | _RawBatch = _raw_decoder.decode(value)
    except msgspec.ValidationError as exc:
        return DeadLetter(_classify(str(exc)), str(exc))
    except msgspec.DecodeError as exc:
        return DeadLetter(_malformed(value), str(exc))
    except UnicodeDecodeError as exc:
        return DeadLetter("bad_encoding", f"invalid UTF-8 in a string: {exc}")
    except RecursionError:
        return _TOO_DEEP
    if not isinstance(record, _RawBatch):  # not reached: the one-pass decode fails on what fails here
        return _single_event(key, record, bounds)
    channel_id = record.channel_id
    if key != channel_id.encode():
        return DeadLetter("key_mismatch", f"record key {key!r} is not the channel id {channel_id!r}")
    kept: list[Event] = []
    rejected: list[RejectedEvent] = []
    for index, raw in enumerate(record.events):
        outcome = _decode_event(raw, channel_id, bounds)
        if isinstance(outcome, tuple):
            rejected.append(RejectedEvent(index, outcome[0], outcome[1], bytes(raw)))
        else:
            kept.append(outcome)
    return Decoded(channel_id, kept, rejected)


def _single_event(key: bytes | None, event: Event, bounds: TimeBounds) -> Decoded | DeadLetter:
    """The checks of a single-event record after decoding (inlined in :func:`decode_record`, its hot path)."""
    channel_id = event.channel_id
    if key != channel_id.encode():
        return DeadLetter("key_mismatch", f"record key {key!r} is not the channel id {channel_id!r}")
    problem = _time_problem(event, bounds)
    return DeadLetter(*problem) if problem is not None else Decoded(channel_id, [event])


def _decode_event(raw: msgspec.Raw, channel_id: str, bounds: TimeBounds) -> Event | tuple[DeadLetterReason, str]:
    """One event of an envelope, or why it is rejected."""
    try:
        event: Event = _event_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        return _classify(str(exc)), str(exc)
    except msgspec.DecodeError as exc:
        return "bad_json", str(exc)
    except UnicodeDecodeError as exc:
        return "bad_encoding", f"invalid UTF-8 in a string: {exc}"
    except Exception as exc:
        return "bad_json", f"undecodable event ({type(exc).__name__}: {exc})"
    problem = _event_problem(event, channel_id, bounds)
    return event if problem is None else problem


def _event_problem(event: Event, channel_id: str, bounds: TimeBounds) -> tuple[DeadLetterReason, str] | None:
    if event.channel_id != channel_id:
        return "mixed_channels", f"event {event.event_id} names {event.channel_id!r} in a batch of {channel_id!r}"
    return _time_problem(event, bounds)


def _time_problem(event: Event, bounds: TimeBounds) -> tuple[DeadLetterReason, str] | None:
    if event.ts_ms > bounds.max_ts_ms:
        return "ts_future", f"event {event.event_id} at {event.ts_ms} is after {bounds.max_ts_ms}"
    if event.ts_ms < bounds.min_ts_ms:
        return "ts_past", f"event {event.event_id} at {event.ts_ms} is before {bounds.min_ts_ms}"
    return None


_TOO_DEEP: Final = DeadLetter("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
_STRUCTURE: Final = b'[]{}"'
_NOT_STRUCTURE: Final = bytes(byte for byte in range(256) if byte not in _STRUCTURE)
_FOLD_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
_TOO_DEEP_RUN: Final = b"[" * (MAX_JSON_DEPTH + 1)


def _too_deep(value: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests deeper than ``limit`` levels, brackets inside strings not counted.

    Exact for valid JSON, and never under the depth a parser reaches before an error in invalid JSON. Costs a few
    passes over the bytes in C: only records the cheap count in :func:`decode_record` cannot vouch for get here.
    """
    if b"\\" in value:  # drop escapes, so that every remaining quote opens or closes a string
        value = value.replace(b"\\\\", b"").replace(b'\\"', b"")
    view = value.translate(_FOLD_BRACKETS, _NOT_STRUCTURE)  # only quotes and brackets, '{}' folded into '[]'
    if b'"' in view:
        view = _outside_strings(view.replace(b'""', b""))  # dropping adjacent quotes keeps the others paired
    depth = 0
    too_deep_run = _TOO_DEEP_RUN if limit == MAX_JSON_DEPTH else b"[" * (limit + 1)
    while b"[]" in view:  # each pass removes the innermost level
        if too_deep_run in view:  # that many brackets opened in a row: a shortcut for the deepest records
            return True
        depth += 1
        if depth > limit:
            return True
        view = view.replace(b"[]", b"")
    return depth + view.count(b"[") > limit  # unclosed brackets (truncated JSON) nest over the rest


def _outside_strings(view: bytes, chunk: int = 1 << 16) -> bytes:
    """``view`` without its strings (quotes pair up from the start), chunk by chunk to bound the memory."""
    kept: list[bytes] = []
    inside = False
    for start in range(0, len(view), chunk):
        parts = view[start : start + chunk].split(b'"')
        kept.append(b"".join(parts[1::2] if inside else parts[::2]))
        if len(parts) % 2 == 0:  # an odd number of quotes in the chunk
            inside = not inside
    return b"".join(kept)


_BYTE_ORDER_MARKS: Final = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _malformed(value: bytes) -> DeadLetterReason:
    """The reason for a value that is not valid JSON: ``bad_encoding`` if it is not UTF-8 text, else ``bad_json``."""
    if value.startswith(_BYTE_ORDER_MARKS) or b"\x00" in value[:4]:
        return "bad_encoding"
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return "bad_encoding"
    return "bad_json"


_TYPE_PATH: Final = re.compile(r"at `\$\.type`$")
_VERSION_PATH: Final = re.compile(r"^Invalid enum value .* at `\$\.v`$")


def _classify(message: str) -> DeadLetterReason:
    """The reason for a schema validation error of a whole record, an envelope or one event of an envelope."""
    if _TYPE_PATH.search(message) or message.endswith("missing required field `type`"):
        return "unknown_type"
    if _VERSION_PATH.search(message):
        return "unsupported_version"
    return "schema_invalid"
