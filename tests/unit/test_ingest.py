"""The gateway's pure parts (stream/ingest.py): body limits, splitting, validation, tokens, rate limits, envelopes."""

from __future__ import annotations

import gzip
import json
import zlib

import msgspec
import pytest

from schemas.events import MAX_JSON_DEPTH, Batch
from stream.decode import Decoded, TimeBounds, decode_record
from stream.ingest import (
    EVENT_MAX_DEPTH,
    EnvelopePacker,
    Limits,
    RequestError,
    Source,
    TokenBucket,
    TokenError,
    TokenStore,
    envelope,
    hash_token,
    parse_sources,
    read_body,
    split_events,
    validate_events,
)

BOUNDS = TimeBounds(min_ts_ms=1_600_000_000_000, max_ts_ms=1_800_000_000_000)
SOURCE = Source("shop", bytes.fromhex(hash_token("t0ken")), frozenset({"fair"}), ("allowed-",))


def event(i: int = 0, channel: str = "c1", campaign: str = "fair", **more: object) -> bytes:
    doc = {
        "type": "view",
        "event_id": f"e{i}",
        "channel_id": channel,
        "creator_id": "cr",
        "campaign": campaign,
        "user_id": "u",
        "ts_ms": 1_687_600_000_000 + i,
        **more,
    }
    return json.dumps(doc).encode()


def test_ndjson_and_array_bodies_split_into_the_same_events() -> None:
    events = [event(i) for i in range(3)]
    ndjson = b"\r\n".join(events) + b"\n\n"
    array = b"[" + b", ".join(events) + b"]"
    limits = Limits()
    assert split_events(ndjson, limits) == events
    assert [json.loads(e) for e in split_events(array, limits)] == [json.loads(e) for e in events]
    assert split_events(b"\xef\xbb\xbf" + ndjson, limits) == events, "a leading byte order mark is ignored"
    assert [json.loads(e) for e in split_events(b"\xef\xbb\xbf" + array, limits)] == [json.loads(e) for e in events]


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"", 400, "no_events"),
        (b"\n \n", 400, "no_events"),
        (b"[]", 400, "no_events"),
        (b"[1, 2", 400, "bad_body"),
        (b"[" * 5000 + b"]" * 5000, 400, "too_deep"),
    ],
)
def test_bodies_refused_whole(body: bytes, status: int, reason: str) -> None:
    with pytest.raises(RequestError) as caught:
        split_events(body, Limits())
    assert (caught.value.status, caught.value.reason) == (status, reason)


def test_too_many_events_is_413() -> None:
    limits = Limits(max_events=3)
    assert len(split_events(b"\n".join([event()] * 3), limits)) == 3
    for body in (b"\n".join([event()] * 4), b"[" + b",".join([event()] * 4) + b"]"):
        with pytest.raises(RequestError) as caught:
            split_events(body, limits)
        assert (caught.value.status, caught.value.reason) == (413, "too_many_events")


def test_body_size_limits() -> None:
    limits = Limits(max_body_bytes=1000, max_decompressed_bytes=5000)
    assert read_body(b"x" * 1000, limits, gzip=False) == b"x" * 1000
    with pytest.raises(RequestError) as caught:
        read_body(b"x" * 1001, limits, gzip=False)
    assert caught.value.status == 413
    assert read_body(gzip.compress(b"y" * 5000), limits, gzip=True) == b"y" * 5000
    with pytest.raises(RequestError) as caught:
        read_body(gzip.compress(b"y" * 5001), limits, gzip=True)
    assert (caught.value.status, caught.value.reason) == (413, "decompressed_too_large")


def test_gzip_bomb_is_cut_off_without_inflating_it() -> None:
    """1 GB of zeros compresses to ~1 MB; the reader stops once its output passes the limit."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    compressed = b"".join(bomb.compress(chunk) for _ in range(1024)) + bomb.flush()
    limits = Limits(max_body_bytes=len(compressed) + 1, max_decompressed_bytes=1 << 20)
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(RequestError) as caught:
        read_body(compressed, limits, gzip=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert caught.value.status == 413
    assert peak < 16 << 20, f"peak {peak} bytes: the bomb was inflated"


def test_bad_and_concatenated_gzip() -> None:
    limits = Limits()
    with pytest.raises(RequestError) as caught:
        read_body(b"not gzip", limits, gzip=True)
    assert (caught.value.status, caught.value.reason) == (400, "bad_gzip")
    with pytest.raises(RequestError):
        read_body(gzip.compress(event())[:-10], limits, gzip=True)
    two = gzip.compress(event(1) + b"\n") + gzip.compress(event(2) + b"\n")
    assert split_events(read_body(two, limits, gzip=True), limits) == [event(1), event(2)]


def test_validation_matches_the_worker_decoder() -> None:
    """Every event the gateway accepts, the worker accepts in an envelope; every one it rejects, for the same
    reason the worker gives it as a single record."""
    candidates = [
        event(1),
        event(2, extra={"unknown": [1, 2]}),
        b'{"type":"view"}',
        event(3, ts_ms=1.5e12),
        event(4, ts_ms=1_900_000_000_000),
        event(5, ts_ms=1_500_000_000_000),
        event(6, v=2),
        event(7, type="nope"),
        b"\xef\xbb\xbf" + event(8),
        b"{not json",
        event(9, text="\ud800"),
        event(10, deep=json.loads("[" * 29 + "]" * 29)),
        event(11, deep=json.loads("[" * 30 + "]" * 30)),
        event(12, channel="x" * 129),
    ]
    validated = validate_events(candidates, BOUNDS, Limits(), SOURCE)
    accepted = {raw for _, raw in validated.accepted}
    errors = {e.index: e.reason for e in validated.errors}
    assert len(accepted) + len(errors) == len(candidates)
    assert errors[12] == "too_deep"  # 31 levels: 33 inside an envelope
    for index, raw in enumerate(candidates):
        single = json.loads(raw.lstrip(b"\xef\xbb\xbf")) if index not in (9,) else None
        key = single["channel_id"].encode() if isinstance(single, dict) and "channel_id" in single else b"k"
        verdict = decode_record(key, raw, BOUNDS)
        if raw in accepted:
            assert isinstance(verdict, Decoded)
            in_envelope = decode_record(key, envelope(single["channel_id"], [raw]), BOUNDS)
            assert isinstance(in_envelope, Decoded) and len(in_envelope.events) == 1 and not in_envelope.rejected
        elif index != 12:
            assert not isinstance(verdict, Decoded)
            assert errors[index] == verdict.reason, (index, errors[index], verdict)


def test_event_byte_limit_and_depth_limit() -> None:
    assert EVENT_MAX_DEPTH == MAX_JSON_DEPTH - 2
    validated = validate_events([event(1), event(2, text="x" * 500)], BOUNDS, Limits(max_event_bytes=300), SOURCE)
    assert len(validated.accepted) == 1
    assert [(e.index, e.reason) for e in validated.errors] == [(1, "oversized")]


def test_authorization_by_campaign_and_prefix_and_statuses() -> None:
    raws = [event(1), event(2, campaign="other"), event(3, channel="allowed-7", campaign="other"), b"bad"]
    validated = validate_events(raws, BOUNDS, Limits(), SOURCE)
    assert [raw for _, raw in validated.accepted] == [raws[0], raws[2]]
    assert [(e.index, e.reason) for e in validated.errors] == [(1, "forbidden"), (3, "bad_json")]
    assert validated.status == 200
    answer = validated.answer()
    assert (answer["accepted"], answer["rejected"]) == (2, 2)
    assert validate_events([raws[1], b"bad"], BOUNDS, Limits(), SOURCE).status == 403
    assert validate_events([b"bad"], BOUNDS, Limits(), SOURCE).status == 400


TOML = f"""
[sources.shop-a]
token_sha256 = "{hash_token("token-a")}"
campaigns = ["fair"]

[sources.shop-b]
token_sha256 = "{hash_token("token-b").upper()}"
channel_prefixes = ["b-"]
rate_eps = 10
burst = 20
"""


def test_tokens_are_checked_against_hashes() -> None:
    store = TokenStore(parse_sources(TOML))
    a = store.authenticate("Bearer token-a")
    b = store.authenticate("bearer  token-b ")
    assert a is not None and a.name == "shop-a" and a.rate_eps is None
    assert b is not None and b.name == "shop-b" and b.rate_eps == 10 and b.burst == 20
    for header in (None, "", "Bearer", "Bearer ", "Basic token-a", "Bearer token-c", "token-a", "Bearer token-a2"):
        assert store.authenticate(header) is None, header
    # The hash itself is not a token.
    assert store.authenticate(f"Bearer {hash_token('token-a')}") is None


@pytest.mark.parametrize(
    "text",
    [
        "not toml [",
        '[sources.x]\ntoken_sha256 = "abc"\ncampaigns = ["f"]',
        f'[sources.x]\ntoken_sha256 = "{hash_token("t")}"',
        f'[sources.x]\ntoken_sha256 = "{hash_token("t")}"\nchannel_prefixes = [""]',
        f'[sources.x]\ntoken_sha256 = "{hash_token("t")}"\ncampaigns = ["f"]\ntoken = "t"',
        f'[sources.x]\ntoken_sha256 = "{hash_token("t")}"\ncampaigns = ["f"]\nrate_eps = -1',
        f'[sources.x]\ntoken_sha256 = "{hash_token("t")}"\ncampaigns = ["f"]\n'
        f'[sources.y]\ntoken_sha256 = "{hash_token("t")}"\ncampaigns = ["f"]',
    ],
)
def test_invalid_token_files_are_refused(text: str) -> None:
    with pytest.raises(TokenError):
        parse_sources(text)


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=100, burst=200, now=0)
    assert bucket.retry_after(0) == 0
    bucket.charge(500, 0)  # into debt: 200 - 500 = -300
    assert bucket.retry_after(0) == 4  # (1 + 300) / 100 s, rounded up
    assert bucket.retry_after(2.5) == 1
    assert bucket.retry_after(3.01) == 0
    bucket.charge(1, 100)
    assert bucket.tokens == 199  # refilled up to the burst only


def test_envelopes_pack_per_livestream_in_order_within_limits() -> None:
    packer: EnvelopePacker[str] = EnvelopePacker(max_events=3, max_bytes=4000)
    full = []
    for i in range(7):
        full += packer.add("c1", event(i), "r1" if i < 4 else "r2")
    full += packer.add("c2", event(9, channel="c2"), "r2")
    assert packer.pending_events == 2
    rest = packer.take()
    assert packer.pending_events == 0
    packed = full + rest
    assert [p.events for p in packed] == [3, 3, 1, 1]
    assert [p.owners for p in packed] == [{"r1": 3}, {"r1": 1, "r2": 2}, {"r2": 1}, {"r2": 1}]
    ids = []
    for p in packed:
        batch = msgspec.json.decode(p.value, type=Batch)
        assert p.key == batch.channel_id.encode()
        ids += [(batch.channel_id, e.event_id) for e in batch.events]
        verdict = decode_record(p.key, p.value, BOUNDS)
        assert isinstance(verdict, Decoded) and len(verdict.events) == p.events
    assert ids == [("c1", f"e{i}") for i in range(7)] + [("c2", "e9")]


def test_envelope_byte_limit() -> None:
    packer: EnvelopePacker[int] = EnvelopePacker(max_events=1000, max_bytes=1000)
    out = []
    for i in range(50):
        out += packer.add("c1", event(i), 0)
    out += packer.take()
    assert sum(p.events for p in out) == 50
    assert all(len(p.value) <= 1000 for p in out)
    assert len(out) > 1
