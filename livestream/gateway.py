"""``livestream gateway``: the HTTP ingestion gateway (aiohttp, one process) in front of ``<ns>.events``.

``POST /v1/events`` takes NDJSON or a JSON array of events (optionally ``Content-Encoding: gzip``) from a source
known by its bearer token. The pure parts (limits, validation, tokens, rate limits, envelopes) are in
``stream/ingest.py``; this module reads the body under its limits, packs accepted events per livestream into batch
envelopes (:class:`Batcher`, lingering at most ``LIVESTREAM_GATEWAY_LINGER_MS``), produces them keyed by
``channel_id`` with an idempotent ``acks=all`` producer and answers only once Kafka acknowledged every accepted
event of the request: 200, or 503 with ``Retry-After`` when Kafka does not acknowledge within
``LIVESTREAM_GATEWAY_PRODUCE_TIMEOUT_S`` or the accepted bytes not yet acknowledged would pass
``LIVESTREAM_GATEWAY_MAX_IN_FLIGHT_BYTES``. A client that retries after a 503 or a timeout resends the same events
(same ``event_id`` and ``ts_ms``): some may already be on the topic, and the worker counts each id once.

Also ``/healthz`` (the producer loop runs), ``/readyz`` (Kafka answered a metadata request in the last
:data:`READY_WINDOW_S` seconds) and ``/metrics``. Log lines name sources, counts and statuses: never a token, a
hash or a payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from agents.startup import ensure_topics
from stream.decode import TimeBounds
from stream.ingest import (
    REJECT_REASONS,
    BodyReader,
    EnvelopePacker,
    Limits,
    Packed,
    RequestError,
    Source,
    TokenBucket,
    TokenError,
    TokenStore,
    envelope_overhead,
    parse_sources,
    split_events,
    validate_events,
)
from stream.settings import Settings

log = logging.getLogger("livestream.gateway")

READY_WINDOW_S: Final = 10.0
"""/readyz answers 200 while Kafka answered a metadata request this recently."""
READY_CHECK_S: Final = 2.0
STATUS_CODES: Final = ("200", "400", "401", "403", "413", "415", "429", "500", "503")
"""Statuses of ``POST /v1/events`` (every one is exported from the start, at 0)."""
_encode: Final = msgspec.json.Encoder().encode


class GatewayMetrics:
    """The gateway's Prometheus metrics, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "livestream_gateway_requests", "POST /v1/events answers by HTTP status", ["code"], registry=r
        )
        self.accepted = Counter(
            "livestream_gateway_events_accepted",
            "events acknowledged by Kafka and answered 200, by source",
            ["source"],
            registry=r,
        )
        self.rejected = Counter(
            "livestream_gateway_events_rejected",
            "events of a request rejected one by one, by reason",
            ["reason"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "livestream_gateway_request_duration_seconds",
            "POST /v1/events: from the request's arrival to its answer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.produce_seconds = Histogram(
            "livestream_gateway_produce_duration_seconds",
            "one envelope: from its hand-over to the producer to Kafka's acknowledgement",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.in_flight_bytes = Gauge(
            "livestream_gateway_in_flight_bytes", "accepted event bytes not yet acknowledged by Kafka", registry=r
        )
        self.in_flight_limit = Gauge(
            "livestream_gateway_in_flight_limit_bytes", "LIVESTREAM_GATEWAY_MAX_IN_FLIGHT_BYTES", registry=r
        )
        self.envelopes = Counter(
            "livestream_gateway_envelopes_produced", "batch envelopes acknowledged by Kafka", registry=r
        )
        self.kafka_ready = Gauge(
            "livestream_gateway_kafka_ready", "1 while Kafka answers the gateway's metadata requests", registry=r
        )
        for code in STATUS_CODES:
            self.requests.labels(code)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def load_sources(settings: Settings) -> TokenStore:
    """Sources of the tokens file and of ``LIVESTREAM_GATEWAY_TOKENS``; TokenError if none or one is invalid."""
    sources: list[Source] = []
    if settings.gateway_tokens_file is not None:
        path = Path(settings.gateway_tokens_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenError(f"cannot read the tokens file {path}: {exc.strerror}") from None
        sources += parse_sources(text, str(path))
    if settings.gateway_tokens:
        sources += parse_sources(settings.gateway_tokens, "LIVESTREAM_GATEWAY_TOKENS")
    if not sources:
        raise TokenError("no source: set LIVESTREAM_GATEWAY_TOKENS_FILE or LIVESTREAM_GATEWAY_TOKENS")
    digests = [s.token_sha256 for s in sources]
    if len(set(digests)) != len(digests):
        raise TokenError("two sources share one token")
    return TokenStore(sources)


@dataclass(eq=False)
class Ticket:
    """One request's accepted events on their way to Kafka."""

    remaining: int
    """Events not yet acknowledged or failed."""
    size: int
    """Their bytes, counted in flight until every one is acknowledged or failed."""
    done: asyncio.Future[None]
    error: BaseException | None = None


@dataclass
class Batcher:
    """Packs accepted events per livestream into envelopes (across concurrent requests) and produces them.

    Envelopes are produced one after the other, in the order they were closed, so a livestream's events keep
    their order. A request's ticket completes when every envelope holding its events is acknowledged; it fails as
    soon as one of them fails. Its bytes stay in flight until all of them are resolved, whether or not the request
    still waits: memory is bounded by ``max_in_flight`` even while Kafka is down.
    """

    settings: Settings
    metrics: GatewayMetrics
    producer: AIOKafkaProducer | None = None
    in_flight: int = 0
    packer: EnvelopePacker[Ticket] = field(init=False)
    queue: asyncio.Queue[Packed[Ticket]] = field(init=False, default_factory=asyncio.Queue)
    _timer: asyncio.TimerHandle | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.packer = EnvelopePacker(
            self.settings.gateway_envelope_max_events, self.settings.gateway_envelope_max_bytes
        )
        self.metrics.in_flight_limit.set(self.settings.gateway_max_in_flight_bytes)

    def has_room(self, size: int) -> bool:
        return self.in_flight + size <= self.settings.gateway_max_in_flight_bytes

    def submit(self, events: list[tuple[str, bytes]], size: int) -> Ticket:
        loop = asyncio.get_running_loop()
        ticket = Ticket(len(events), size, loop.create_future())
        ticket.done.add_done_callback(_retrieve)  # a request that gave up never awaits its ticket
        self.in_flight += size
        self.metrics.in_flight_bytes.set(self.in_flight)
        for channel_id, raw in events:
            for packed in self.packer.add(channel_id, raw, ticket):
                self.queue.put_nowait(packed)
        if self.packer.pending_events:
            linger = self.settings.gateway_linger_ms / 1000
            if linger <= 0:
                self.flush()
            elif self._timer is None:
                self._timer = loop.call_later(linger, self.flush)
        return ticket

    def flush(self) -> None:
        self._timer = None
        for packed in self.packer.take():
            self.queue.put_nowait(packed)

    async def run(self) -> None:
        """Produce the envelopes as they come (runs for the gateway's lifetime)."""
        topic = self.settings.events_topic
        while True:
            packed = await self.queue.get()
            producer = self.producer
            if producer is None:
                self._resolve(packed, RuntimeError("Kafka producer not connected"))
                continue
            started = time.monotonic()
            try:
                future = await producer.send(topic, packed.value, key=packed.key)
            except Exception as exc:
                self._resolve(packed, exc)
                continue
            future.add_done_callback(lambda f, p=packed, t=started: self._acknowledged(p, t, f))

    def _acknowledged(self, packed: Packed[Ticket], started: float, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._resolve(packed, asyncio.CancelledError())
        elif future.exception() is not None:
            self._resolve(packed, future.exception())
        else:
            self.metrics.produce_seconds.observe(time.monotonic() - started)
            self.metrics.envelopes.inc()
            self._resolve(packed, None)

    def _resolve(self, packed: Packed[Ticket], error: BaseException | None) -> None:
        if error is not None:
            log.warning("producing an envelope of %d events failed: %r", packed.events, error)
        for ticket, events in packed.owners.items():
            ticket.remaining -= events
            if error is not None and ticket.error is None:
                ticket.error = error
                if not ticket.done.done():
                    ticket.done.set_exception(error)
            if ticket.remaining == 0:
                self.in_flight -= ticket.size
                if not ticket.done.done():
                    ticket.done.set_result(None)
        self.metrics.in_flight_bytes.set(self.in_flight)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=_encode(body), content_type="application/json", headers=headers)


class Gateway:
    """The gateway's state: sources, rate limit buckets, the batcher and its producer, readiness."""

    def __init__(self, settings: Settings, store: TokenStore, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or GatewayMetrics()
        self.limits = Limits(
            max_body_bytes=settings.gateway_max_body_bytes,
            max_decompressed_bytes=settings.gateway_max_decompressed_bytes,
            max_events=settings.gateway_max_events,
            max_event_bytes=settings.gateway_max_event_bytes,
        )
        if settings.gateway_max_event_bytes + envelope_overhead("x" * 512) > settings.gateway_envelope_max_bytes:
            raise ValueError("LIVESTREAM_GATEWAY_MAX_EVENT_BYTES does not fit in LIVESTREAM_GATEWAY_ENVELOPE_MAX_BYTES")
        self.batcher = Batcher(settings, self.metrics)
        self.buckets: dict[str, TokenBucket] = {}
        self.kafka_seen_at: float | None = None
        self.reading_bytes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.retry_after_s = max(1, math.ceil(settings.gateway_produce_timeout_s / 4))

    # Lifecycle -----------------------------------------------------------------------------------------------------
    def reload_sources(self) -> bool:
        """Read the sources again (tokens file and ``LIVESTREAM_GATEWAY_TOKENS``); on SIGHUP. A file that cannot
        be used is logged and the sources in use are kept; rate-limit buckets of removed or re-limited sources
        are dropped."""
        try:
            store = load_sources(self.settings)
        except TokenError as exc:
            log.error("sources not reloaded, the previous ones stay in use: %s", exc)
            return False
        limits = {source.name: (source.rate_eps, source.burst) for source in store.sources}
        before = {source.name: (source.rate_eps, source.burst) for source in self.store.sources}
        self.store = store
        for name in [n for n in self.buckets if limits.get(n, ()) != before.get(n)]:
            del self.buckets[name]
        log.info("sources reloaded: %d sources", len(store.sources))
        return True

    async def start(self, _app: web.Application | None = None) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_sources)
        self._tasks = [
            asyncio.create_task(self.batcher.run(), name="gateway-producer"),
            asyncio.create_task(self._connect(), name="gateway-connect"),
        ]

    async def stop(self, _app: web.Application | None = None) -> None:
        self.batcher.flush()
        deadline = time.monotonic() + self.settings.gateway_produce_timeout_s
        while (self.batcher.in_flight or not self.batcher.queue.empty()) and time.monotonic() < deadline:
            if self.batcher.producer is None:
                break
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.batcher.producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.batcher.producer.stop(), 10)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **self.settings.kafka_client_options(),
            enable_idempotence=True,
            acks="all",
            linger_ms=1,
            max_batch_size=1_048_576,
            max_request_size=1_048_576,
            compression_type="lz4",
            request_timeout_ms=30_000,
        )

    async def _connect(self) -> None:
        """Start the producer (retrying while Kafka does not answer), then check Kafka every few seconds."""
        while self.batcher.producer is None:
            try:  # the events topic with the pipeline's partition count, as a worker would create it
                await asyncio.wait_for(ensure_topics(self.settings), 30)
            except Exception as exc:
                log.info("topics not checked (%s); a worker creates them", type(exc).__name__)
            producer = self._new_producer()
            try:
                await producer.start()
            except Exception as exc:
                log.warning("Kafka not reachable yet (%s); retrying", type(exc).__name__)
                with contextlib.suppress(Exception):
                    await producer.stop()
                await asyncio.sleep(1)
                continue
            self.batcher.producer = producer
            self.kafka_seen_at = time.monotonic()
            log.info("connected to Kafka; producing to %s", self.settings.events_topic)
        producer = self.batcher.producer
        while True:
            try:
                await asyncio.wait_for(producer.client.fetch_all_metadata(), READY_CHECK_S * 2)
            except Exception:
                pass
            else:
                self.kafka_seen_at = time.monotonic()
            self.metrics.kafka_ready.set(1 if self.ready else 0)
            await asyncio.sleep(READY_CHECK_S)

    @property
    def ready(self) -> bool:
        seen = self.kafka_seen_at
        return self.batcher.producer is not None and seen is not None and time.monotonic() - seen < READY_WINDOW_S

    @property
    def alive(self) -> bool:
        return bool(self._tasks) and not self._tasks[0].done()

    # Requests ------------------------------------------------------------------------------------------------------
    def bucket(self, source: Source, now: float) -> TokenBucket:
        bucket = self.buckets.get(source.name)
        if bucket is None:
            rate = source.rate_eps or self.settings.gateway_rate_eps
            burst = source.burst or self.settings.gateway_rate_burst
            bucket = self.buckets[source.name] = TokenBucket(rate, burst, now)
        return bucket

    async def events(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        status = 500
        held = [0]  # body bytes this request holds while it is read and validated (``reading_bytes``)
        try:
            response = await self._events(request, held)
            status = response.status
            return response
        finally:
            self.reading_bytes -= held[0]
            self.metrics.requests.labels(str(status)).inc()
            self.metrics.request_seconds.observe(time.monotonic() - started)

    async def _events(self, request: web.Request, held: list[int]) -> web.Response:
        source = self.store.authenticate(request.headers.get("Authorization"))
        if source is None:
            log.info("401: missing or unknown bearer token from %s", request.remote)
            return _json(
                401,
                {"error": "unauthorized", "message": "missing or unknown bearer token"},
                {"WWW-Authenticate": 'Bearer realm="livestream"'},
            )
        now = time.monotonic()
        bucket = self.bucket(source, now)
        wait = bucket.retry_after(now)
        if wait:
            log.info("429: source %s over its rate limit", source.name)
            return _json(429, {"error": "rate_limited", "message": f"retry in {wait} s"}, {"Retry-After": str(wait)})
        try:
            raws = await self._read(request, held)
        except RequestError as exc:
            log.info("%d: source %s: %s", exc.status, source.name, exc.reason)
            retry = {"Retry-After": str(self.retry_after_s)} if exc.status == 503 else None
            return _json(exc.status, {"error": exc.reason, "message": exc.message}, retry)
        bucket.charge(len(raws), time.monotonic())
        now_ms = int(time.time() * 1000)
        bounds = TimeBounds(
            now_ms - self.settings.max_past_days * 86_400_000, now_ms + self.settings.max_future_s * 1000
        )
        validated = validate_events(raws, bounds, self.limits, source)
        for error in validated.errors:
            self.metrics.rejected.labels(error.reason).inc()
        status = validated.status
        if status != 200:
            log.info("%d: source %s: %d events, none accepted", status, source.name, len(raws))
            return _json(status, validated.answer())
        size = validated.accepted_bytes
        if self.batcher.producer is None or not self.batcher.has_room(size):
            log.info("503: source %s: Kafka not connected or %d bytes in flight", source.name, self.batcher.in_flight)
            return self._unavailable("Kafka is not keeping up: retry later")
        ticket = self.batcher.submit(validated.accepted, size)
        try:
            await asyncio.wait_for(asyncio.shield(ticket.done), self.settings.gateway_produce_timeout_s)
        except TimeoutError:
            log.warning("503: source %s: Kafka did not acknowledge %d events in time", source.name, ticket.remaining)
            return self._unavailable("Kafka did not acknowledge in time: retry the same events")
        except Exception as exc:
            log.warning("503: source %s: producing failed (%s)", source.name, type(exc).__name__)
            return self._unavailable("producing to Kafka failed: retry the same events")
        self.metrics.accepted.labels(source.name).inc(len(validated.accepted))
        return _json(200, validated.answer())

    def _unavailable(self, message: str) -> web.Response:
        return _json(503, {"error": "unavailable", "message": message}, {"Retry-After": str(self.retry_after_s)})

    async def _read(self, request: web.Request, held: list[int]) -> list[bytes]:
        """The body's events, read under the request's limits and the gateway's ``max_reading_bytes``: bodies
        being read and validated by all requests together hold at most that much (503 above, before memory grows);
        ``held`` counts this request's share (twice the body: the body and its events)."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip", ""):
            raise RequestError(415, "unsupported_encoding", "Content-Encoding must be gzip or identity")
        length = request.content_length
        if length is not None and length > self.limits.max_body_bytes:
            raise RequestError(413, "body_too_large", f"body over {self.limits.max_body_bytes} bytes")
        reader = BodyReader(self.limits, gzip=encoding in ("gzip", "x-gzip"))
        while True:
            chunk = await request.content.read(1 << 16)
            if not chunk:
                break
            reader.feed(chunk)
            self._hold(held, 2 * reader.size)
        body = reader.finish()
        self._hold(held, 2 * len(body))
        return split_events(body, self.limits)

    def _hold(self, held: list[int], size: int) -> None:
        if size > held[0]:
            self.reading_bytes += size - held[0]
            held[0] = size
            if self.reading_bytes > self.settings.gateway_max_reading_bytes:
                raise RequestError(503, "busy", "too many request bodies being read: retry later")

    async def healthz(self, _request: web.Request) -> web.Response:
        alive = self.alive
        return _json(200 if alive else 503, {"alive": alive})

    async def readyz(self, _request: web.Request) -> web.Response:
        ready = self.ready
        return _json(200 if ready else 503, {"ready": ready, "in_flight_bytes": self.batcher.in_flight})

    async def metrics_view(self, _request: web.Request) -> web.Response:
        self.metrics.kafka_ready.set(1 if self.ready else 0)
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


def build_app(gateway: Gateway) -> web.Application:
    # The body is read chunk by chunk under the gateway's own limits; aiohttp's limit applies to request.read() only.
    # aiohttp would inflate a gzip body by itself, without a limit: the gateway inflates it under its limits.
    app = web.Application(client_max_size=gateway.limits.max_body_bytes, handler_args={"auto_decompress": False})
    app.router.add_post("/v1/events", gateway.events)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/readyz", gateway.readyz)
    app.router.add_get("/metrics", gateway.metrics_view)
    app.on_startup.append(gateway.start)
    app.on_shutdown.append(gateway.stop)
    return app


def run_gateway(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT (then flush what was accepted, up to the produce timeout); SIGHUP reloads
    the sources (token rotation without a restart)."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # its retries would log payload-free but noisy lines
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: the gateway's counters start with the process
    store = load_sources(settings)
    gateway = Gateway(settings, store)
    log.info(
        "gateway on http://%s:%d/v1/events -> %s (%d sources; pid %d)",
        settings.gateway_host,
        settings.gateway_port,
        settings.events_topic,
        len(store.sources),
        os.getpid(),
    )
    web.run_app(
        build_app(gateway),
        host=settings.gateway_host,
        port=settings.gateway_port,
        access_log=None,
        print=None,
        shutdown_timeout=settings.gateway_produce_timeout_s + 5,
    )
