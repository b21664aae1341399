"""Property tests of the decoder against the published JSON Schema, and fuzzing with mutated real records.

- Documents generated from ``schemas/json/event.v1.schema.json`` (plus the record-level rules it states in words)
  decode, with every field as written; documents made invalid by one mutation are rejected, as the schema (checked
  with ``jsonschema``) rejects them: whole records as dead letters, one event of an envelope as a rejection.
- Real records of the fair replay, mutated (bytes flipped, truncated, spliced, nested deeply, invalid UTF-8 inside
  strings, re-encoded as UTF-16/32, ...): :func:`decode_record` never raises, and what it decodes belongs to the key.
- The nesting check agrees with a reference scanner on valid JSON and never under-counts a truncated one.

Documents are generated from the schema by :func:`from_schema` below rather than by hypothesis-jsonschema, which
relies on Hypothesis internals that changed in Hypothesis 6.170.10 and fails with the project's Hypothesis. It
covers the keywords the input schemas use and raises on any other, so a schema change cannot go untested.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable
from typing import Any

import jsonschema
import msgspec
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from schemas.events import INTEGER_LITERAL_RULE, MAX_JSON_DEPTH, MAX_TS_MS, Batch
from schemas.generate import JSON_DIR
from stream.decode import (
    DEAD_LETTER_REASONS,
    DeadLetter,
    Decoded,
    TimeBounds,
    _decode_by_event,
    _outside_strings,
    _too_deep,
    decode_record,
)
from stream.replay.generator import FairReplay
from stream.replay.profile import OCOP_FAIR, scaled

WIDE = TimeBounds(min_ts_ms=0, max_ts_ms=MAX_TS_MS)
FAIR = TimeBounds(min_ts_ms=1_687_500_000_000, max_ts_ms=1_687_700_000_000)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENVELOPE_SETTINGS = settings(SETTINGS, max_examples=80)  # envelopes take ~25 ms each to generate

# ---------------------------------------------------------------------------------------------- schema generator

ANNOTATIONS = {"$schema", "title", "description", "default", "discriminator", "$defs"}
KEYWORDS = {
    "$ref",
    "anyOf",
    "type",
    "enum",
    "properties",
    "required",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "items",
    "minItems",
    "maxItems",
}
MAX_GENERATED_ITEMS = 6
MAX_GENERATED_STRING = 40

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
)
any_json = st.recursive(
    json_scalars | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def load(name: str) -> dict[str, Any]:
    return json.loads((JSON_DIR / f"{name}.schema.json").read_text())


EVENT_SCHEMA: dict[str, Any] = load("event.v1")
VALIDATOR = jsonschema.Draft202012Validator(EVENT_SCHEMA)
DEFS_BY_TYPE = {sub["properties"]["type"]["enum"][0]: sub for sub in EVENT_SCHEMA["$defs"].values()}


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        assert node["$ref"].startswith("#/$defs/") and set(node) <= {"$ref"} | ANNOTATIONS, node
        node = EVENT_SCHEMA["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return node


def from_schema(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """The documents valid under ``node`` (a subschema of the event schema), with unknown fields now and then."""
    node = resolve(node)
    unknown = set(node) - KEYWORDS - ANNOTATIONS
    assert not unknown, f"the generator does not know {unknown}: teach it before changing the schema"
    if "anyOf" in node:
        return st.one_of([from_schema(option) for option in node["anyOf"]])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node["type"]
    if kind == "string":
        low = node.get("minLength", 0)
        high = node.get("maxLength", low + MAX_GENERATED_STRING)
        return st.text(min_size=low, max_size=min(high, low + MAX_GENERATED_STRING)) | st.text(
            alphabet=st.characters(codec="utf-8"), min_size=high, max_size=high
        )
    if kind == "integer":
        return st.integers(node.get("minimum"), node.get("maximum"))
    if kind == "array":
        low = node.get("minItems", 0)
        high = min(node.get("maxItems", MAX_GENERATED_ITEMS), low + MAX_GENERATED_ITEMS)
        return st.lists(from_schema(node["items"]), min_size=low, max_size=high)
    assert kind == "object", node
    properties: dict[str, Any] = node["properties"]
    required = set(node.get("required", ()))
    fields = {name: from_schema(sub) for name, sub in properties.items()}
    extra = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in properties), any_json, max_size=2)

    @st.composite
    def objects(draw: st.DrawFn) -> dict[str, Any]:
        out = {name: draw(fields[name]) for name in properties if name in required or draw(st.booleans())}
        unknown = draw(extra)  # before or after the known fields ("type" included): JSON objects are unordered
        return unknown | out if draw(st.booleans()) else out | unknown

    return objects()


def encoders() -> st.SearchStrategy[Callable[[Any], bytes]]:
    """The ways producers write JSON: compact UTF-8, ASCII with \\u escapes, indented."""
    return st.sampled_from(
        [
            msgspec.json.encode,
            lambda doc: json.dumps(doc).encode(),
            lambda doc: json.dumps(doc, ensure_ascii=False, indent=2).encode(),
            lambda doc: json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(),
        ]
    )


def reference_depth(text: bytes) -> int:
    """Deepest nesting of arrays and objects outside strings, reached anywhere in ``text`` (valid JSON or not)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def fix_envelope(doc: dict[str, Any]) -> dict[str, Any]:
    """The rule the schema states in words: an envelope's events name its channel."""
    if doc["type"] == "batch":
        doc["events"] = [{**event, "channel_id": doc["channel_id"]} for event in doc["events"]]
    return doc


# ------------------------------------------------------------------------------------------- schema-valid documents


@SETTINGS
@given(from_schema(EVENT_SCHEMA).map(fix_envelope), encoders())
def test_documents_valid_under_the_schema_decode(doc: dict[str, Any], encode: Callable[[Any], bytes]) -> None:
    assert VALIDATOR.is_valid(doc), list(VALIDATOR.iter_errors(doc))
    value = encode(doc)
    assume(reference_depth(value) <= MAX_JSON_DEPTH)  # the record-level limit the schema states in words
    result = decode_record(doc["channel_id"].encode(), value, WIDE)
    assert isinstance(result, Decoded), result
    assert result.rejected == []
    written = doc["events"] if doc["type"] == "batch" else [doc]
    assert len(result.events) == len(written)
    for event, fields in zip(result.events, written, strict=True):
        decoded = msgspec.to_builtins(event)
        assert decoded["type"] == fields["type"]
        assert {k: decoded[k] for k in fields if k in decoded} == {k: v for k, v in fields.items() if k in decoded}


# ----------------------------------------------------------------------------------------- schema-invalid documents

WRONG_TYPES: dict[str, list[Any]] = {
    "string": [0, None, True, [], {}],
    "integer": ["1", 1.5, None, True, [], {}],
    "enum": ["zzz", 0, None, 2, []],
}


def wrong_values(sub: dict[str, Any]) -> list[Any]:
    """Values outside ``sub``: of a wrong type, or just past one of its limits."""
    sub = resolve(sub)
    if "enum" in sub:
        return [value for value in WRONG_TYPES["enum"] if value not in sub["enum"]]
    values = list(WRONG_TYPES.get(sub["type"], ["x", 0, None]))
    if "minimum" in sub:
        values.append(sub["minimum"] - 1)
    if "maximum" in sub:
        values.append(sub["maximum"] + 1)
    if "minLength" in sub:
        values.append("x" * (sub["minLength"] - 1))
    if "maxLength" in sub:
        values.append("é" * (sub["maxLength"] + 1))
    if sub.get("minItems"):
        values.append([])
    return values


@st.composite
def mutated(draw: st.DrawFn, node: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A document valid under ``node`` but for one field: removed if required, else given a wrong value."""
    doc = draw(from_schema(node))
    schema = resolve(node)
    if "anyOf" in schema:
        schema = DEFS_BY_TYPE[doc["type"]]
    name = draw(st.sampled_from(sorted(schema["properties"])))
    if name in schema.get("required", ()) and draw(st.booleans()):
        del doc[name]
    else:
        doc[name] = draw(st.sampled_from(wrong_values(schema["properties"][name])))
    return doc, name


SINGLE_EVENT = {"anyOf": [o for o in EVENT_SCHEMA["anyOf"] if o["$ref"] != "#/$defs/Batch"]}
INVALID_REASONS = {"schema_invalid", "unknown_type", "unsupported_version"}


def assert_rejected_whole(case: tuple[dict[str, Any], str], encode: Callable[[Any], bytes]) -> None:
    """A document the schema rejects is a whole-record dead letter with a schema-level reason."""
    doc, name = case
    assert not VALIDATOR.is_valid(doc), (name, doc)
    channel = doc.get("channel_id")
    key = channel.encode() if isinstance(channel, str) and channel else b"c1"
    result = decode_record(key, encode(doc), WIDE)
    assert isinstance(result, DeadLetter), (name, result)
    assert result.reason in INVALID_REASONS, (name, result)


@SETTINGS
@given(mutated(SINGLE_EVENT), encoders())
def test_a_single_event_invalid_under_the_schema_is_a_dead_letter(
    case: tuple[dict[str, Any], str], encode: Callable[[Any], bytes]
) -> None:
    assert_rejected_whole(case, encode)


@ENVELOPE_SETTINGS
@given(mutated({"$ref": "#/$defs/Batch"}), encoders())
def test_an_envelope_invalid_under_the_schema_is_a_dead_letter(
    case: tuple[dict[str, Any], str], encode: Callable[[Any], bytes]
) -> None:
    assert_rejected_whole(case, encode)


@ENVELOPE_SETTINGS
@given(from_schema({"$ref": "#/$defs/Batch"}).map(fix_envelope), st.data(), encoders())
def test_an_event_invalid_under_the_schema_is_rejected_from_its_envelope(
    envelope: dict[str, Any], data: st.DataObject, encode: Callable[[Any], bytes]
) -> None:
    index = data.draw(st.integers(0, len(envelope["events"]) - 1))
    bad, name = data.draw(mutated(SINGLE_EVENT))
    if name != "channel_id":
        bad["channel_id"] = envelope["channel_id"]
    envelope["events"][index] = bad
    assert not VALIDATOR.is_valid(envelope)
    value = encode(envelope)
    assume(reference_depth(value) <= MAX_JSON_DEPTH)
    result = decode_record(envelope["channel_id"].encode(), value, WIDE)
    assert isinstance(result, Decoded), result
    [rejected] = result.rejected
    assert rejected.index == index
    assert rejected.reason in INVALID_REASONS | {"mixed_channels"}, rejected
    assert json.loads(rejected.raw) == bad
    assert len(result.events) == len(envelope["events"]) - 1


def integer_fields(node: dict[str, Any]) -> list[str]:
    return [name for name, sub in resolve(node)["properties"].items() if resolve(sub).get("type") == "integer"]


@SETTINGS
@given(from_schema(SINGLE_EVENT), st.data())
def test_integral_floats_are_the_documented_exception(doc: dict[str, Any], data: st.DataObject) -> None:
    """JSON Schema's "integer" admits 1.0; the decoder does not, as every integer field's description says."""
    schema = DEFS_BY_TYPE[doc["type"]]
    name = data.draw(st.sampled_from(integer_fields(schema)))
    assert INTEGER_LITERAL_RULE in schema["properties"][name]["description"]
    doc[name] = float(doc.get(name, 1))
    assume(doc[name] < 2**53)
    value = json.dumps(doc).encode()
    assert VALIDATOR.is_valid(json.loads(value))
    result = decode_record(doc["channel_id"].encode(), value, WIDE)
    assert isinstance(result, DeadLetter) and result.reason == "schema_invalid", result


# ------------------------------------------------------------------------------------- fuzzing with real records


@functools.cache
def corpus() -> list[tuple[bytes, bytes]]:
    """Real records of the fair replay: single events of every type, and envelopes of a few sizes."""
    replay = FairReplay(scaled(OCOP_FAIR, 0.002), 3)
    events = list(itertools.islice(replay.iter_events(), 3000))
    records: list[tuple[bytes, bytes]] = []
    for kind in sorted({type(e) for e in events}, key=lambda t: t.__name__):
        event = next(e for e in events if type(e) is kind)
        records.append((event.channel_id.encode(), msgspec.json.encode(event)))
    by_channel: dict[str, list[Any]] = {}
    for event in events:
        by_channel.setdefault(event.channel_id, []).append(event)
    channels = sorted(by_channel, key=lambda c: -len(by_channel[c]))
    for channel, size in zip(channels, (1, 7, 40, 200), strict=False):
        batch = Batch(channel_id=channel, events=by_channel[channel][:size])
        records.append((channel.encode(), msgspec.json.encode(batch)))
    return records


def positions(value: bytes, byte: bytes) -> list[int]:
    return [i for i in range(len(value)) if value[i : i + 1] == byte]


@st.composite
def mutation(draw: st.DrawFn, value: bytes) -> bytes:
    at = draw(st.integers(0, len(value)))
    kind = draw(
        st.sampled_from(
            [
                "flip",
                "insert",
                "delete",
                "truncate",
                "splice",
                "nest",
                "bad_utf8",
                "brackets_in_string",
                "utf16",
                "rewrite",
            ]
        )
    )
    if kind == "flip" and value:
        at = min(at, len(value) - 1)
        return value[:at] + bytes([draw(st.integers(0, 255))]) + value[at + 1 :]
    if kind == "insert":
        return (
            value[:at]
            + draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"[", b"{", b'"', b"\\"]))
            + value[at:]
        )
    if kind == "delete":
        return value[:at] + value[at + draw(st.integers(1, 16)) :]
    if kind == "truncate":
        return value[:at]
    if kind == "splice":
        other = draw(st.sampled_from(corpus()))[1]
        return value[:at] + other[draw(st.integers(0, len(other))) :]
    if kind == "nest":
        colons = positions(value, b":")
        depth = draw(st.sampled_from([MAX_JSON_DEPTH - 3, MAX_JSON_DEPTH, 1000, 100_000]))
        inner = b'{"z":' * depth + b"0" + b"}" * depth if draw(st.booleans()) else b"[" * depth + b"]" * depth
        if colons and draw(st.booleans()):  # as an unknown field of some object
            spot = draw(st.sampled_from(colons))
            start = value.rfind(b"{", 0, spot)
            if start >= 0:
                return value[: start + 1] + b'"deep":' + inner + b"," + value[start + 1 :]
        return inner[: draw(st.integers(0, len(inner)))] + value  # unclosed in front
    if kind == "bad_utf8":
        quotes = positions(value, b'"')
        if quotes:
            spot = draw(st.sampled_from(quotes)) + 1
            junk = draw(
                st.sampled_from([b"\xff", b"\xc3", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"])
            )
            return value[:spot] + junk + value[spot:]
    if kind == "brackets_in_string":
        quotes = positions(value, b'"')
        if quotes:
            spot = draw(st.sampled_from(quotes)) + 1
            return (
                value[:spot]
                + draw(st.sampled_from([b"[", b"]", b"{{", b"}]", b"[" * 40, b"\\\\[", b'\\"[']))
                + value[spot:]
            )
    if kind == "utf16":
        try:
            return value.decode().encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32"])))
        except UnicodeDecodeError:
            return value
    if kind == "rewrite":
        try:
            doc = json.loads(value)
        except (ValueError, RecursionError):
            return value
        text = json.dumps(doc, indent=draw(st.sampled_from([None, 1, 4])), ensure_ascii=draw(st.booleans()))
        return text.encode("utf-8", "surrogatepass")  # a lone surrogate escape becomes bytes that are not UTF-8
    return value


@st.composite
def mutated_records(draw: st.DrawFn) -> tuple[bytes | None, bytes]:
    key, value = draw(st.sampled_from(corpus()))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        value = draw(mutation(value))
    key = draw(st.sampled_from([key, key, key, None, b"", key + b"\xff", draw(st.sampled_from(corpus()))[0]]))
    return key, value


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_records(), st.sampled_from([WIDE, FAIR]))
def test_mutated_real_records_never_raise(record: tuple[bytes | None, bytes], bounds: TimeBounds) -> None:
    key, value = record
    result = decode_record(key, value, bounds)
    assert isinstance(result, Decoded | DeadLetter)
    outcome = "decoded with rejections" if isinstance(result, Decoded) and result.rejected else "decoded"
    hypothesis_event(result.reason if isinstance(result, DeadLetter) else outcome)
    if isinstance(result, DeadLetter):
        assert result.reason in DEAD_LETTER_REASONS and result.message
        return
    assert key == result.channel_id.encode()
    assert all(event.channel_id == result.channel_id for event in result.events)
    assert all(bounds.min_ts_ms <= event.ts_ms <= bounds.max_ts_ms for event in result.events)
    indices = [r.index for r in result.rejected]
    assert indices == sorted(set(indices))
    assert all(r.reason in DEAD_LETTER_REASONS and r.message and r.raw for r in result.rejected)
    assert reference_depth(value) <= MAX_JSON_DEPTH
    # The one-pass decode and the event-by-event decode agree (the first falls back to the second).
    assert _decode_by_event(key, value, bounds) == result


def test_real_records_decode_whole() -> None:
    for key, value in corpus():
        result = decode_record(key, value, FAIR)
        assert isinstance(result, Decoded) and result.rejected == [] and result.events
        assert _decode_by_event(key, value, FAIR) == result


# --------------------------------------------------------------------------------------------- the nesting check

nestable_text = st.text(alphabet=st.sampled_from('[]{}"\\ab:,é\n'), max_size=6)
deep_json = st.recursive(
    st.none() | st.integers(-5, 5) | nestable_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(nestable_text, inner, max_size=3),
    max_leaves=60,
)


def chain(depth: int, leaf: Any) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"k[": leaf}
    return leaf


@SETTINGS
@given(deep_json, st.integers(0, 2 * MAX_JSON_DEPTH), st.booleans(), st.sampled_from([None, 0, 2]), st.data())
def test_nesting_check_matches_a_reference_scanner(
    doc: Any, extra: int, ascii_only: bool, indent: int | None, data: st.DataObject
) -> None:
    text = json.dumps(chain(extra, doc), ensure_ascii=ascii_only, indent=indent).encode()
    assert _too_deep(text) == (reference_depth(text) > MAX_JSON_DEPTH)
    prefix = text[: data.draw(st.integers(0, len(text)))]  # a truncated record: never under-counted
    if reference_depth(prefix) > MAX_JSON_DEPTH:
        assert _too_deep(prefix)


@SETTINGS
@given(st.binary(max_size=200).map(lambda b: bytes(b'[]"'[x % 3] for x in b)), st.integers(1, 40))
def test_strings_are_dropped_across_chunks(view: bytes, chunk: int) -> None:
    expected = bytearray()
    inside = False
    for byte in view:
        if byte == 0x22:
            inside = not inside
        elif not inside:
            expected.append(byte)
    assert _outside_strings(view, chunk) == bytes(expected)
