"""Every kind of bad record becomes a dead letter with a reason, every bad event of an envelope a rejection with
one; good records and the good events of an envelope decode; nothing raises."""

from __future__ import annotations

import json
import time

import msgspec
import pytest

from schemas.events import (
    ENVELOPE_EVENT_BYTES,
    MAX_BATCH_EVENTS,
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    Batch,
    Comment,
    View,
)
from stream.decode import (
    DEAD_LETTER_REASONS,
    DeadLetter,
    Decoded,
    RejectedEvent,
    TimeBounds,
    decode_record,
)

BOUNDS = TimeBounds(min_ts_ms=1_600_000_000_000, max_ts_ms=1_800_000_000_000)
GOOD = {
    "type": "view",
    "event_id": "e1",
    "channel_id": "c1",
    "creator_id": "cr",
    "campaign": "f",
    "user_id": "u",
    "ts_ms": 1_687_572_000_000,
}


def enc(obj: object) -> bytes:
    return msgspec.json.encode(obj)


def envelope(events: list[object], channel_id: str = "c1") -> bytes:
    return enc({"type": "batch", "channel_id": channel_id, "events": events})


def nested(depth: int, inner: bytes = b"1") -> bytes:
    """``depth`` levels of alternating arrays and objects around ``inner``."""
    opening = b"".join(b"[" if level % 2 else b'{"a":' for level in range(depth))
    closing = b"".join(b"]" if level % 2 else b"}" for level in reversed(range(depth)))
    return opening + inner + closing


def with_unknown(event: dict[str, object], unknown: bytes) -> bytes:
    """``event`` with an extra field ``x`` holding the raw JSON ``unknown``."""
    return enc(event)[:-1] + b',"x":' + unknown + b"}"


# Whole records that go to the dead-letter topic (also injected by tests/chaos/test_poison.py).
POISON: list[tuple[str, bytes | None, bytes | None]] = [
    ("null_value", b"c1", None),
    ("oversized", b"c1", b" " * (MAX_RECORD_BYTES + 1)),
    ("too_deep", b"c1", with_unknown(GOOD, nested(1000))),
    ("bad_encoding", b"c1", enc({**GOOD, "user_id": "u"}).replace(b'"u"', b'"u\xff"')),
    ("bad_encoding", b"c1", b"\xff\xfe"),
    ("bad_json", b"c1", b"{not json"),
    ("bad_json", b"c1", envelope([GOOD, {**GOOD, "user_id": "u"}]).replace(b'"u"', b'"\\ud800"')),  # lone surrogate
    ("schema_invalid", b"c1", enc({**GOOD, "ts_ms": "yesterday"})),
    ("schema_invalid", b"c1", enc({k: v for k, v in GOOD.items() if k != "user_id"})),
    ("schema_invalid", b"c1", enc([GOOD])),
    ("schema_invalid", b"c1", enc({**GOOD, "type": "order", "amount_vnd": 1.5})),
    ("schema_invalid", b"c1", enc({**GOOD, "ts_ms": 1_687_572_000_000.0})),
    ("schema_invalid", b"c1", envelope([])),
    ("unknown_type", b"c1", enc({**GOOD, "type": "teleport"})),
    ("unknown_type", b"c1", enc({k: v for k, v in GOOD.items() if k != "type"})),
    ("unsupported_version", b"c1", enc({**GOOD, "v": 2})),
    ("key_mismatch", b"other", enc(GOOD)),
    ("key_mismatch", None, enc(GOOD)),
    ("ts_future", b"c1", enc({**GOOD, "ts_ms": 1_900_000_000_000})),
    ("ts_past", b"c1", enc({**GOOD, "ts_ms": 1})),
]

# One bad event of an envelope: rejected alone, the envelope's good events are kept.
REJECTS: list[tuple[str, bytes]] = [
    ("schema_invalid", enc({**GOOD, "user_id": 7})),
    ("schema_invalid", enc({**GOOD, "ts_ms": 1.7e12})),
    ("unknown_type", enc({**GOOD, "type": "teleport"})),
    ("unknown_type", enc({**GOOD, "type": "batch"})),
    ("schema_invalid", b"1"),
    ("unsupported_version", enc({**GOOD, "v": 2})),
    ("mixed_channels", enc({**GOOD, "channel_id": "c2"})),
    ("ts_future", enc({**GOOD, "ts_ms": 1_900_000_000_000})),
    ("ts_past", enc({**GOOD, "ts_ms": 1})),
    ("bad_encoding", enc(GOOD).replace(b'"u"', b'"\xc3("')),
]


@pytest.mark.parametrize(("reason", "key", "value"), POISON)
def test_poison_is_a_dead_letter(reason: str, key: bytes | None, value: bytes | None) -> None:
    result = decode_record(key, value, BOUNDS)
    assert isinstance(result, DeadLetter), result
    assert result.reason == reason, result.message
    assert result.message


@pytest.mark.parametrize(("reason", "bad"), REJECTS)
def test_a_bad_event_of_an_envelope_is_rejected_alone(reason: str, bad: bytes) -> None:
    second = enc({**GOOD, "event_id": "e2"})
    value = b'{"type":"batch","channel_id":"c1","events":[' + enc(GOOD) + b"," + bad + b"," + second + b"]}"
    result = decode_record(b"c1", value, BOUNDS)
    assert isinstance(result, Decoded), result
    assert [e.event_id for e in result.events] == ["e1", "e2"]
    [rejected] = result.rejected
    assert (rejected.index, rejected.reason, rejected.raw) == (1, reason, bad), rejected.message
    assert rejected.message


def test_every_reason_has_an_example() -> None:
    assert {reason for reason, _, _ in POISON} | {reason for reason, _ in REJECTS} == set(DEAD_LETTER_REASONS)


def test_single_event_and_batch_decode() -> None:
    single = decode_record(b"c1", enc(GOOD), BOUNDS)
    assert isinstance(single, Decoded) and single.channel_id == "c1" and isinstance(single.events[0], View)
    assert single.rejected == []
    batch = Batch(
        channel_id="c1", events=[msgspec.convert(GOOD, View), msgspec.convert({**GOOD, "event_id": "e2"}, View)]
    )
    decoded = decode_record(b"c1", msgspec.json.encode(batch), BOUNDS)
    assert isinstance(decoded, Decoded) and [e.event_id for e in decoded.events] == ["e1", "e2"]
    assert decoded.rejected == []


def test_decoded_api() -> None:
    view = msgspec.convert(GOOD, View)
    assert Decoded("c1", [view]) == Decoded(channel_id="c1", events=[view], rejected=[])
    assert Decoded("c1", []).rejected is not Decoded("c1", []).rejected  # a fresh list each
    rejected = RejectedEvent(3, "ts_past", "too old", b"{}")
    assert (rejected.index, rejected.reason, rejected.message, rejected.raw) == (3, "ts_past", "too old", b"{}")
    assert Decoded("c1", [], [rejected]).rejected == [rejected]


def test_invalid_utf8_inside_a_string() -> None:
    value = enc({**GOOD, "type": "comment", "text": "ngon quá"}).replace("á".encode(), b"\xe1\x28")
    result = decode_record(b"c1", value, BOUNDS)
    assert isinstance(result, DeadLetter) and result.reason == "bad_encoding", result
    # Inside a field the decoder skips, bytes are not read: the event is fine.
    skipped = with_unknown(GOOD, b'"\xff\xfe"')
    assert isinstance(decode_record(b"c1", skipped, BOUNDS), Decoded)


def test_utf16_and_byte_order_marks_are_bad_encoding() -> None:
    text = json.dumps(GOOD)
    for value in (text.encode("utf-16"), text.encode("utf-16-le"), text.encode("utf-32"), b"\xef\xbb\xbf" + enc(GOOD)):
        result = decode_record(b"c1", value, BOUNDS)
        assert isinstance(result, DeadLetter) and result.reason == "bad_encoding", (value[:8], result)


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
@pytest.mark.parametrize("shape", ["array", "object", "mixed"])
def test_deep_nesting_in_an_unknown_field(depth: int, shape: str) -> None:
    if shape == "array":
        inner = b"[" * depth + b"]" * depth
    elif shape == "object":
        inner = b'{"a":' * depth + b"1" + b"}" * depth
    else:
        inner = nested(depth)
    for value in (with_unknown(GOOD, inner), envelope([msgspec.Raw(with_unknown(GOOD, inner))])):
        result = decode_record(b"c1", value, BOUNDS)
        assert isinstance(result, DeadLetter) and result.reason == "too_deep", result
    unclosed = with_unknown(GOOD, b"[" * depth)  # truncated: never closed
    result = decode_record(b"c1", unclosed, BOUNDS)
    assert isinstance(result, DeadLetter) and result.reason == "too_deep", result


def test_depth_limit_is_exact() -> None:
    # The event's object is level 1: an unknown field can nest MAX_JSON_DEPTH - 1 more.
    ok = with_unknown(GOOD, nested(MAX_JSON_DEPTH - 1))
    assert isinstance(decode_record(b"c1", ok, BOUNDS), Decoded)
    deep = with_unknown(GOOD, nested(MAX_JSON_DEPTH))
    assert decode_record(b"c1", deep, BOUNDS) == DeadLetter(
        "too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    )
    # In an envelope, the envelope and its events list come first: 2 levels less.
    events = [msgspec.Raw(enc(GOOD))] * 40
    ok_batch = envelope([*events, msgspec.Raw(with_unknown(GOOD, nested(MAX_JSON_DEPTH - 3)))])
    assert isinstance(decode_record(b"c1", ok_batch, BOUNDS), Decoded)
    deep_batch = envelope([*events, msgspec.Raw(with_unknown(GOOD, nested(MAX_JSON_DEPTH - 2)))])
    result = decode_record(b"c1", deep_batch, BOUNDS)
    assert isinstance(result, DeadLetter) and result.reason == "too_deep", result


def test_brackets_inside_strings_do_not_nest() -> None:
    text = '[{"\\"[' * 300 + "}]\\\\" * 100
    comment = {**GOOD, "type": "comment", "text": text[:2000]}
    assert isinstance(decode_record(b"c1", enc(comment), BOUNDS), Decoded)
    batch = envelope([comment] * 50)
    result = decode_record(b"c1", batch, BOUNDS)
    assert isinstance(result, Decoded) and len(result.events) == 50 and isinstance(result.events[0], Comment)
    # json.dumps escapes differently (\u escapes, spaces after separators): still not nesting.
    spaced = json.dumps({"type": "batch", "channel_id": "c1", "events": [comment] * 50}, indent=1).encode()
    result = decode_record(b"c1", spaced, BOUNDS)
    assert isinstance(result, Decoded) and len(result.events) == 50


def test_one_bad_event_among_500() -> None:
    events: list[object] = [{**GOOD, "event_id": f"e{i}"} for i in range(500)]
    events[137] = {**GOOD, "event_id": "e137", "quantity": 1, "type": "order"}  # no order_id, amount, status
    result = decode_record(b"c1", envelope(events), BOUNDS)
    assert isinstance(result, Decoded), result
    assert len(result.events) == 499
    assert [e.event_id for e in result.events] == [f"e{i}" for i in range(500) if i != 137]
    [rejected] = result.rejected
    assert rejected.index == 137 and rejected.reason == "schema_invalid"
    assert json.loads(rejected.raw) == events[137]


def test_one_late_event_among_500_keeps_the_one_pass_events() -> None:
    events: list[object] = [{**GOOD, "event_id": f"e{i}"} for i in range(500)]
    events[499] = {**GOOD, "event_id": "e499", "ts_ms": 1}
    events[0] = {**GOOD, "event_id": "e0", "channel_id": "c9"}
    result = decode_record(b"c1", envelope(events), BOUNDS)
    assert isinstance(result, Decoded) and len(result.events) == 498
    assert [(r.index, r.reason) for r in result.rejected] == [(0, "mixed_channels"), (499, "ts_past")]
    assert [json.loads(r.raw) for r in result.rejected] == [events[0], events[499]]


def test_an_envelope_of_bad_events_is_all_rejected() -> None:
    events: list[object] = [
        {**GOOD, "v": 2},
        {**GOOD, "ts_ms": 1},
        {"type": "teleport"},
        [],
        {**GOOD, "channel_id": "x"},
    ]
    result = decode_record(b"c1", envelope(events), BOUNDS)
    assert isinstance(result, Decoded), result
    assert result.channel_id == "c1" and result.events == []
    assert [(r.index, r.reason) for r in result.rejected] == [
        (0, "unsupported_version"),
        (1, "ts_past"),
        (2, "unknown_type"),
        (3, "schema_invalid"),
        (4, "mixed_channels"),
    ]
    assert [r.raw for r in result.rejected] == [enc(e) for e in events]


@pytest.mark.parametrize(
    ("reason", "key", "value"),
    [
        ("schema_invalid", b"c1", enc({"type": "batch", "events": [GOOD]})),
        ("schema_invalid", b"c1", enc({"type": "batch", "channel_id": "c1", "events": GOOD})),
        ("schema_invalid", b"c1", enc({"type": "batch", "channel_id": "", "events": [GOOD]})),
        ("schema_invalid", b"c1", envelope([0] * (MAX_BATCH_EVENTS + 1))),
        ("unsupported_version", b"c1", enc({"type": "batch", "v": 2, "channel_id": "c1", "events": [GOOD]})),
        ("bad_encoding", b"c1", envelope([GOOD], channel_id="c1\u00e9").replace(b"\xc3\xa9", b"\xc3")),
        ("key_mismatch", b"c2", envelope([GOOD, {"type": "teleport"}])),
        ("key_mismatch", None, envelope([GOOD])),
        ("bad_json", b"c1", envelope([GOOD])[:-1]),
    ],
)
def test_a_bad_envelope_is_a_dead_letter_whole(reason: str, key: bytes | None, value: bytes) -> None:
    result = decode_record(key, value, BOUNDS)
    assert isinstance(result, DeadLetter) and result.reason == reason, result


def test_integral_floats_are_not_integers() -> None:
    """The contract: integer fields are JSON integer literals (see stream/decode.py), however integral the float."""
    for written in (b"1687572000000.0", b"1.687572e12", b"1687572000000e0", b"1.687572E+12"):
        value = enc(GOOD).replace(b"1687572000000", written)
        result = decode_record(b"c1", value, BOUNDS)
        assert isinstance(result, DeadLetter) and result.reason == "schema_invalid", (written, result)
    order = {**GOOD, "type": "order", "order_id": "o", "product_id": "p", "quantity": 1, "status": "paid"}
    for amount in (b"100000", b"100000.0", b"1e5"):
        value = enc({**order, "amount_vnd": 7}).replace(b'"amount_vnd":7', b'"amount_vnd":' + amount)
        result = decode_record(b"c1", value, BOUNDS)
        assert isinstance(result, Decoded) == (amount == b"100000"), (amount, result)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("c1", enc(GOOD)),  # a str key
        (b"c1", "not bytes"),  # a str value
        (b"c1", bytearray(enc(GOOD))),
        (b"\xff", enc(GOOD)),
        (b"c1", b""),
        (b"c1", b"\x00"),
    ],
)
def test_nothing_raises(key: object, value: object) -> None:
    result = decode_record(key, value, BOUNDS)  # type: ignore[arg-type]
    assert isinstance(result, Decoded | DeadLetter)


@pytest.mark.parametrize(
    "value",
    [
        b"[" * MAX_RECORD_BYTES,
        b"[" * (MAX_RECORD_BYTES // 2) + b"]" * (MAX_RECORD_BYTES // 2),
        b"[[]" * (MAX_RECORD_BYTES // 3),
        b'["]",' * (MAX_RECORD_BYTES // 5),
        b'{"a":' * (MAX_RECORD_BYTES // 5),
        b'["' + b'\\\\\\"[' * (MAX_RECORD_BYTES // 6 - 1) + b'"]',
    ],
    ids=["open", "balanced", "interleaved", "strings", "objects", "escapes"],
)
def test_the_largest_poison_is_rejected_quickly(value: bytes) -> None:
    started = time.perf_counter()
    result = decode_record(b"c1", value, BOUNDS)
    assert isinstance(result, DeadLetter), result
    assert time.perf_counter() - started < 2.0  # about 40 ms each here


def _order_of_size(index: int, size: int, channel_id: str) -> dict[str, object]:
    """An order event with UUID-like ids, its comment-free JSON padded to exactly ``size`` bytes by its order id."""
    event: dict[str, object] = {
        "type": "order",
        "event_id": f"{index:08d}-7d1e-4c2b-9f3a-5b6c7d8e9f01",
        "channel_id": channel_id,
        "creator_id": "c2f1a3b4-5d6e-4f70-8192-a3b4c5d6e7f8",
        "campaign": "ocop-bac-giang-2023",
        "user_id": f"{index:08d}-1111-4222-8333-444455556666",
        "ts_ms": 1_687_572_000_000 + index,
        "order_id": "o",
        "product_id": "vai-thieu-luc-ngan-1kg",
        "quantity": 1,
        "amount_vnd": 250_000,
        "status": "paid",
    }
    event["order_id"] = "o" * (size - len(enc(event)) + 1)
    assert len(enc(event)) == size
    return event


def test_the_largest_envelope_the_schema_allows_fits_the_byte_limit() -> None:
    """MAX_BATCH_EVENTS events averaging ENVELOPE_EVENT_BYTES (UUID ids: the size of real SDK events) decode whole:
    the count limit of the schema and the byte limit of the decoder agree."""
    channel_id = "0b9c6a52-3f1d-4e8b-a7c2-1d2e3f405162"
    events = [_order_of_size(i, ENVELOPE_EVENT_BYTES, channel_id) for i in range(MAX_BATCH_EVENTS)]
    value = envelope(events, channel_id=channel_id)
    assert len(value) <= MAX_RECORD_BYTES
    result = decode_record(channel_id.encode(), value, BOUNDS)
    assert isinstance(result, Decoded) and len(result.events) == MAX_BATCH_EVENTS and not result.rejected
