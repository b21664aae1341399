"""The ingestion gateway's pure parts: request bodies under limits, per-event validation, tokens, rate limits and
batch envelopes. No I/O: ``livestream/gateway.py`` wires them to HTTP and Kafka.

A request body is NDJSON (one event per line, blank lines ignored) or one JSON array of events, optionally gzip
compressed. Each event is validated by :func:`stream.decode.decode_event`, the worker's own decoder and bounds,
with a nesting limit two levels lower than the worker's (:data:`EVENT_MAX_DEPTH`): the gateway packs events into
batch envelopes, which nest them two levels deeper. Valid events are kept as the bytes the client sent (unknown
fields included) and packed per livestream into envelopes (:class:`EnvelopePacker`), so the worker decodes each
envelope in one pass (its fast path).

Tokens are never stored: a source is known by the SHA-256 of its bearer token (:func:`hash_token`), compared in
constant time (:meth:`TokenStore.authenticate`), and is allowed a set of campaigns and/or livestream id prefixes.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import tomllib
import zlib
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

import msgspec

from schemas.events import MAX_BATCH_EVENTS, MAX_JSON_DEPTH, MAX_RECORD_BYTES, Event
from stream.decode import DEAD_LETTER_REASONS, DeadLetter, TimeBounds, decode_event

EVENT_MAX_DEPTH: Final = MAX_JSON_DEPTH - 2
"""Deepest nesting of one event sent to the gateway: its envelope adds two levels (object and ``events`` array)."""

_RECORD_ONLY_REASONS: Final = frozenset({"null_value", "key_mismatch", "mixed_channels"})
"""Dead-letter reasons of a Kafka record as a whole, which one event of a request cannot have."""

REJECT_REASONS: Final = (*(r for r in DEAD_LETTER_REASONS if r not in _RECORD_ONLY_REASONS), "forbidden")
"""Why one event of a request is rejected: the decoder's event reasons, plus ``forbidden`` (outside the token's
campaigns and livestream prefixes). ``oversized`` is the gateway's per-event limit here."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    max_body_bytes: int = 8 * 1024 * 1024
    """Request body as sent (compressed or not)."""
    max_decompressed_bytes: int = 32 * 1024 * 1024
    """Body after gzip decompression; decompression stops as soon as it would exceed this."""
    max_events: int = 10_000
    max_event_bytes: int = 64 * 1024
    max_depth: int = EVENT_MAX_DEPTH


class RequestError(Exception):
    """The whole request is refused: ``status`` is the HTTP status, ``reason`` a short machine-readable word."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


# --- Body ------------------------------------------------------------------------------------------------------------


class BodyReader:
    """Takes the body chunk by chunk as it arrives and keeps at most the limits' worth of it.

    ``gzip``: each chunk is inflated at once with ``max_length``, so a gzip bomb is cut off as soon as its output
    passes ``max_decompressed_bytes`` (never inflated further). Raises :class:`RequestError` (413, 400).
    """

    def __init__(self, limits: Limits, gzip: bool) -> None:
        self.limits = limits
        self.received = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limits.max_body_bytes:
            raise RequestError(413, "body_too_large", f"body over {self.limits.max_body_bytes} bytes")
        if self._inflater is None:
            self._keep(chunk)
        else:
            self._inflate(chunk)

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limits.max_decompressed_bytes:
            raise RequestError(
                413, "decompressed_too_large", f"body inflates to over {self.limits.max_decompressed_bytes} bytes"
            )
        if data:
            self._parts.append(data)

    def _inflate(self, data: bytes) -> None:
        while data:
            inflater = self._inflater
            assert inflater is not None
            if inflater.eof:  # another gzip member follows (concatenated gzip files are one stream)
                if not data.strip(b"\x00"):
                    return  # padding after the last member
                inflater = self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            room = self.limits.max_decompressed_bytes - self._size + 1  # one byte over says "too large"
            try:
                out = inflater.decompress(data, room)
            except zlib.error as exc:
                raise RequestError(400, "bad_gzip", f"invalid gzip data: {exc}") from None
            self._keep(out)
            data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail

    @property
    def size(self) -> int:
        """Bytes of the (decompressed) body kept so far."""
        return self._size

    def finish(self) -> bytes:
        """The whole (decompressed) body."""
        if self._inflater is not None:
            inflater = self._inflater
            try:
                self._keep(inflater.flush(self.limits.max_decompressed_bytes - self._size + 1))
            except zlib.error as exc:
                raise RequestError(400, "bad_gzip", f"invalid gzip data: {exc}") from None
            if not inflater.eof:
                raise RequestError(400, "bad_gzip", "truncated gzip data")
        return b"".join(self._parts)


def read_body(body: bytes, limits: Limits, gzip: bool) -> bytes:
    """:class:`BodyReader` on a body already in memory."""
    reader = BodyReader(limits, gzip)
    reader.feed(body)
    return reader.finish()


_raw_list: Final = msgspec.json.Decoder(list[msgspec.Raw])
_WHITESPACE: Final = b" \t\r\n"


_UTF8_BOM: Final = b"\xef\xbb\xbf"


def split_events(body: bytes, limits: Limits) -> list[bytes]:
    """The events of a body: a JSON array's items, or NDJSON's non-blank lines. Not validated yet.

    A UTF-8 byte order mark at the start of the body (some HTTP clients write one) is ignored. Raises
    :class:`RequestError`: 400 if the body holds no event or is not a JSON array or NDJSON, 413 if it holds more
    than ``max_events``.
    """
    text = body.removeprefix(_UTF8_BOM).strip(_WHITESPACE)
    if text.startswith(b"["):
        try:
            raws = _raw_list.decode(text)
        except RecursionError:
            raise RequestError(400, "too_deep", "JSON array nested too deep to read") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, "bad_body", f"body starts with '[' but is not a JSON array: {exc}") from None
        if len(raws) > limits.max_events:
            raise RequestError(413, "too_many_events", f"{len(raws)} events, limit {limits.max_events}")
        events = [bytes(raw) for raw in raws]
    else:
        events = []
        for line in text.split(b"\n"):
            line = line.strip(_WHITESPACE)
            if line:
                events.append(line)
                if len(events) > limits.max_events:
                    raise RequestError(413, "too_many_events", f"more than {limits.max_events} events")
    if not events:
        raise RequestError(400, "no_events", "the body holds no event")
    return events


# --- Validation ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventError:
    index: int
    """Position of the event in the request (array index, or n-th non-blank line from 0)."""
    reason: str
    message: str


@dataclass
class Validated:
    """A request's events sorted out: accepted ``(channel_id, raw)`` in request order, and the rejected ones."""

    accepted: list[tuple[str, bytes]] = field(default_factory=list)
    errors: list[EventError] = field(default_factory=list)
    forbidden: int = 0

    @property
    def status(self) -> int:
        """200 if any event is accepted; else 403 if some were valid but not allowed; else 400."""
        if self.accepted:
            return 200
        return 403 if self.forbidden else 400

    @property
    def accepted_bytes(self) -> int:
        return sum(len(raw) for _, raw in self.accepted)

    def answer(self) -> dict[str, object]:
        """The JSON answer of the request."""
        return {
            "accepted": len(self.accepted),
            "rejected": len(self.errors),
            "errors": [{"index": e.index, "error": e.reason, "message": e.message} for e in self.errors],
        }


def validate_events(raws: Iterable[bytes], bounds: TimeBounds, limits: Limits, source: Source) -> Validated:
    """Each event decoded and checked like the worker does, then against what ``source`` may send."""
    out = Validated()
    max_bytes, max_depth = limits.max_event_bytes, limits.max_depth
    for index, raw in enumerate(raws):
        if len(raw) > max_bytes:
            out.errors.append(EventError(index, "oversized", f"event is {len(raw)} bytes, limit {max_bytes}"))
            continue
        event = decode_event(raw, bounds, max_depth)
        if isinstance(event, DeadLetter):
            out.errors.append(EventError(index, event.reason, event.message))
        elif not source.allows(event):
            out.forbidden += 1
            out.errors.append(
                EventError(
                    index,
                    "forbidden",
                    f"campaign {event.campaign!r} / livestream {event.channel_id!r} "
                    f"is not allowed for source {source.name!r}",
                )
            )
        else:
            out.accepted.append((event.channel_id, raw))
    return out


# --- Sources and tokens ----------------------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    """The SHA-256 (hex) of a bearer token: what the tokens file stores."""
    return hashlib.sha256(token.encode()).hexdigest()


def generate_token() -> str:
    """A new random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Source:
    """A client of the gateway: the hash of its token, what it may send, its rate limit."""

    name: str
    token_sha256: bytes
    campaigns: frozenset[str] = frozenset()
    channel_prefixes: tuple[str, ...] = ()
    rate_eps: float | None = None
    """Events per second (None: the gateway's default)."""
    burst: float | None = None
    """Events the bucket holds (None: the gateway's default)."""

    def allows(self, event: Event) -> bool:
        return event.campaign in self.campaigns or event.channel_id.startswith(self.channel_prefixes)


class TokenError(ValueError):
    """A tokens file (or variable) that cannot be used."""


_HEX64: Final = frozenset("0123456789abcdef")


def parse_sources(text: str, origin: str = "tokens") -> list[Source]:
    """Sources from TOML: one table per source under ``sources``::

    [sources.shop-a]
    token_sha256 = "<64 hex digits: livestream gateway hash-token>"
    campaigns = ["ocop-bac-giang-2023"]      # and/or
    channel_prefixes = ["shop-a-"]
    rate_eps = 100000                         # optional
    burst = 200000                            # optional
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokenError(f"{origin}: not TOML: {exc}") from None
    tables = document.get("sources", {})
    if not isinstance(tables, dict):
        raise TokenError(f"{origin}: 'sources' must be a table of sources")
    sources: list[Source] = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise TokenError(f"{origin}: source {name!r} must be a table")
        unknown = set(table) - {"token_sha256", "campaigns", "channel_prefixes", "rate_eps", "burst"}
        if unknown:
            raise TokenError(f"{origin}: source {name!r}: unknown key(s) {sorted(unknown)}")
        digest = str(table.get("token_sha256", "")).lower()
        if len(digest) != 64 or not set(digest) <= _HEX64:
            raise TokenError(f"{origin}: source {name!r}: token_sha256 must be 64 hex digits (a SHA-256, not a token)")
        campaigns = table.get("campaigns", [])
        prefixes = table.get("channel_prefixes", [])
        if not _strings(campaigns) or not _strings(prefixes):
            raise TokenError(f"{origin}: source {name!r}: campaigns and channel_prefixes are lists of strings")
        if not campaigns and not prefixes:
            raise TokenError(f"{origin}: source {name!r} is allowed nothing: give campaigns or channel_prefixes")
        if any(not p for p in prefixes):
            raise TokenError(f"{origin}: source {name!r}: an empty channel prefix would allow every livestream")
        rate, burst = table.get("rate_eps"), table.get("burst")
        for key, value in (("rate_eps", rate), ("burst", burst)):
            if value is not None and (not isinstance(value, int | float) or value <= 0):
                raise TokenError(f"{origin}: source {name!r}: {key} must be a positive number")
        sources.append(
            Source(
                name=str(name),
                token_sha256=bytes.fromhex(digest),
                campaigns=frozenset(campaigns),
                channel_prefixes=tuple(prefixes),
                rate_eps=None if rate is None else float(rate),
                burst=None if burst is None else float(burst),
            )
        )
    digests = [s.token_sha256 for s in sources]
    if len(set(digests)) != len(digests):
        raise TokenError(f"{origin}: two sources share one token")
    return sources


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class TokenStore:
    """The known sources; a bearer token is hashed and compared with every stored hash in constant time."""

    def __init__(self, sources: Iterable[Source]) -> None:
        self.sources = list(sources)
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise TokenError("two sources share one name")

    def authenticate(self, authorization: str | None) -> Source | None:
        """The source whose token the ``Authorization: Bearer <token>`` header carries, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.encode(errors="surrogateescape")).digest()
        found: Source | None = None
        for source in self.sources:  # no early exit: the time taken does not depend on which source matched
            if hmac.compare_digest(digest, source.token_sha256):
                found = source
        return found


# --- Rate limits -----------------------------------------------------------------------------------------------------


class TokenBucket:
    """Events per second with a burst. A request is admitted while the bucket is not empty and then charged its
    events, possibly into debt; the next request waits until the debt is paid back (:meth:`retry_after`)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def retry_after(self, now: float) -> int:
        """0 if a request may go ahead now, else whole seconds until it may (at least 1)."""
        self._refill(now)
        if self.tokens > 0:
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.rate))

    def charge(self, events: int, now: float) -> None:
        self._refill(now)
        self.tokens -= events


# --- Envelopes -------------------------------------------------------------------------------------------------------

_HEAD: Final = b'{"type":"batch","v":1,"channel_id":'
_EVENTS: Final = b',"events":['
_TAIL: Final = b"]}"
_encode: Final = msgspec.json.Encoder().encode


def envelope(channel_id: str, raws: list[bytes]) -> bytes:
    """A batch envelope (``schemas.events.Batch``) around events given as their JSON bytes, unchanged."""
    return b"".join((_HEAD, _encode(channel_id), _EVENTS, b",".join(raws), _TAIL))


def envelope_overhead(channel_id: str) -> int:
    return len(_HEAD) + len(_encode(channel_id)) + len(_EVENTS) + len(_TAIL)


Owner = TypeVar("Owner", bound=Hashable)


@dataclass
class Packed(Generic[Owner]):
    """One envelope ready to produce: key, value, its number of events, and how many of them each owner gave."""

    key: bytes
    value: bytes
    events: int
    owners: dict[Owner, int]


@dataclass
class _Pending(Generic[Owner]):
    raws: list[bytes]
    size: int
    owners: dict[Owner, int]


class EnvelopePacker(Generic[Owner]):
    """Packs events per livestream, in the order added, into envelopes of at most ``max_events`` events and
    ``max_bytes`` bytes. ``add`` returns the envelopes that filled up; ``take`` the rest."""

    def __init__(self, max_events: int = 5_000, max_bytes: int = 512 * 1024) -> None:
        if not 1 <= max_events <= MAX_BATCH_EVENTS:
            raise ValueError(f"max_events must be within 1..{MAX_BATCH_EVENTS}")
        if not 1 <= max_bytes <= MAX_RECORD_BYTES:
            raise ValueError(f"max_bytes must be within 1..{MAX_RECORD_BYTES}")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._pending: dict[str, _Pending[Owner]] = {}
        self.pending_events = 0

    def add(self, channel_id: str, raw: bytes, owner: Owner) -> list[Packed[Owner]]:
        full: list[Packed[Owner]] = []
        pending = self._pending.get(channel_id)
        if pending is not None and (
            len(pending.raws) >= self.max_events or pending.size + 1 + len(raw) > self.max_bytes
        ):
            full.append(self._close(channel_id))
            pending = None
        if pending is None:
            pending = self._pending[channel_id] = _Pending([], envelope_overhead(channel_id) - 1, {})
        pending.raws.append(raw)
        pending.size += 1 + len(raw)
        pending.owners[owner] = pending.owners.get(owner, 0) + 1
        self.pending_events += 1
        return full

    def _close(self, channel_id: str) -> Packed[Owner]:
        pending = self._pending.pop(channel_id)
        self.pending_events -= len(pending.raws)
        return Packed(channel_id.encode(), envelope(channel_id, pending.raws), len(pending.raws), pending.owners)

    def take(self) -> list[Packed[Owner]]:
        """Every pending envelope, livestreams in the order they were first added since the last take."""
        return [self._close(channel_id) for channel_id in list(self._pending)]
