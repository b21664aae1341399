"""Every kind of bad record becomes a dead letter with a reason; good ones decode."""

from __future__ import annotations

import msgspec
import pytest

from schemas.events import MAX_RECORD_BYTES, Batch, View
from stream.decode import DEAD_LETTER_REASONS, DeadLetter, Decoded, TimeBounds, decode_record

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


POISON: list[tuple[str, bytes | None, bytes | None]] = [
    ("null_value", b"c1", None),
    ("oversized", b"c1", b" " * (MAX_RECORD_BYTES + 1)),
    ("bad_json", b"c1", b"{not json"),
    ("bad_json", b"c1", b"\xff\xfe"),
    ("schema_invalid", b"c1", enc({**GOOD, "ts_ms": "yesterday"})),
    ("schema_invalid", b"c1", enc({k: v for k, v in GOOD.items() if k != "user_id"})),
    ("schema_invalid", b"c1", enc([GOOD])),
    ("schema_invalid", b"c1", enc({**GOOD, "type": "order", "amount_vnd": 1.5})),
    ("schema_invalid", b"c1", enc({"type": "batch", "channel_id": "c1", "events": []})),
    ("unknown_type", b"c1", enc({**GOOD, "type": "teleport"})),
    ("unknown_type", b"c1", enc({k: v for k, v in GOOD.items() if k != "type"})),
    ("unsupported_version", b"c1", enc({**GOOD, "v": 2})),
    ("key_mismatch", b"other", enc(GOOD)),
    ("key_mismatch", None, enc(GOOD)),
    (
        "mixed_channels",
        b"c1",
        enc({"type": "batch", "channel_id": "c1", "events": [GOOD, {**GOOD, "channel_id": "c2"}]}),
    ),
    ("ts_future", b"c1", enc({**GOOD, "ts_ms": 1_900_000_000_000})),
    ("ts_past", b"c1", enc({**GOOD, "ts_ms": 1})),
]


@pytest.mark.parametrize(("reason", "key", "value"), POISON)
def test_poison_is_a_dead_letter(reason: str, key: bytes | None, value: bytes | None) -> None:
    result = decode_record(key, value, BOUNDS)
    assert isinstance(result, DeadLetter), result
    assert result.reason == reason, result.message
    assert result.message


def test_every_reason_has_a_poison_example() -> None:
    assert {reason for reason, _, _ in POISON} == set(DEAD_LETTER_REASONS)


def test_single_event_and_batch_decode() -> None:
    single = decode_record(b"c1", enc(GOOD), BOUNDS)
    assert isinstance(single, Decoded) and single.channel_id == "c1" and isinstance(single.events[0], View)
    batch = Batch(
        channel_id="c1", events=[msgspec.convert(GOOD, View), msgspec.convert({**GOOD, "event_id": "e2"}, View)]
    )
    decoded = decode_record(b"c1", msgspec.json.encode(batch), BOUNDS)
    assert isinstance(decoded, Decoded) and [e.event_id for e in decoded.events] == ["e1", "e2"]
