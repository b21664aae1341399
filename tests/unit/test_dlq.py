"""A dead letter fits a broker with Kafka's default message.max.bytes, whatever record it stands for."""

from __future__ import annotations

from dataclasses import dataclass

from agents.dlq import DEAD_LETTER_BUDGET_BYTES, MAX_KEY_BYTES, dead_letter
from stream.decode import DeadLetter

DEFAULT_MESSAGE_MAX_BYTES = 1_048_588


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int = 3
    offset: int = 77


def _size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)


def test_a_small_record_goes_unchanged_with_its_coordinates() -> None:
    record = Record(b"ch-1", b"{not json", [("trace", b"abc")])
    key, value, headers = dead_letter(record, "ns.events", DeadLetter("not_json", "bad"))
    assert (key, value) == (record.key, record.value)
    named = dict(headers)
    assert named["trace"] == b"abc"
    assert (named["source_partition"], named["source_offset"], named["error"]) == (b"3", b"77", b"not_json")
    assert "truncated_from" not in named


def test_a_record_over_the_default_broker_limit_is_cut_to_fit_and_says_so() -> None:
    big = b"x" * 1_200_000
    record = Record(b"k" * (MAX_KEY_BYTES + 5), big, [(f"h{i}", b"v" * 10_000) for i in range(20)])
    key, value, headers = dead_letter(record, "ns.events", DeadLetter("oversized", "too big"))
    named = dict(headers)
    assert _size(key, value, headers) <= DEAD_LETTER_BUDGET_BYTES < DEFAULT_MESSAGE_MAX_BYTES
    assert int(named["truncated_from"]) == len(big) and value is not None and big.startswith(value)
    assert int(named["key_truncated_from"]) == MAX_KEY_BYTES + 5 and key == record.key[:MAX_KEY_BYTES]  # type: ignore[index]
    assert int(named["headers_dropped"]) == 14  # 6 headers of 10 kB fit in 64 KiB
    assert named["error"] == b"oversized"


def test_an_event_of_an_envelope_carries_its_index() -> None:
    record = Record(b"ch-1", b"[...]", [])
    _, value, headers = dead_letter(record, "ns.events", DeadLetter("invalid", "x"), index=4, raw=b'{"type":1}')
    assert value == b'{"type":1}' and dict(headers)["source_event_index"] == b"4"


def test_a_forwarded_copy_names_the_record_the_producer_wrote() -> None:
    copy = Record(b"ch-1", b"{bad", [("trace", b"t"), ("livestream-forwarded-from", b"2@1234")], partition=0, offset=9)
    _, value, headers = dead_letter(copy, "ns.events", DeadLetter("bad_json", "bad"))
    named = dict(headers)
    assert (named["source_partition"], named["source_offset"]) == (b"2", b"1234")
    assert (named["copy_partition"], named["copy_offset"]) == (b"0", b"9")
    assert "livestream-forwarded-from" not in named and named["trace"] == b"t" and value == b"{bad"
