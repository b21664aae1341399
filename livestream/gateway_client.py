"""Sending events through the ingestion gateway: ``livestream replay --via``, the demo and the benchmark.

The fair is generated in a child process (as ``livestream replay`` does) and sent as NDJSON requests of up to
``batch`` events over ``connections`` concurrent connections. Each livestream is given to one connection (round
robin, in order of first appearance) and a connection sends its requests one after the other, so every
livestream's events reach the topic in their order, as with the direct replay: the worker's results are the same.

A request answered 429 or 503, or that failed or timed out on the way, is sent again unchanged after its
``Retry-After`` (the same events with the same ids and times: the worker counts each id once). Any other answer
but 200, or a 200 that rejected an event, is an error: the fair holds only valid events.
"""

from __future__ import annotations

import asyncio
import gzip
import multiprocessing
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from stream.replay.generator import FairReplay
from stream.replay.oracle import Oracle
from stream.replay.profile import FairProfile

_encode = msgspec.json.Encoder().encode
GatewayMinute = tuple[int, list[tuple[str, list[bytes]]]]
"""One fair minute: its start and, per livestream in order, its events as JSON."""


class GatewayError(RuntimeError):
    """The gateway refused events for good (a status other than 200, 429 and 503, or rejected events)."""


@dataclass
class SendStats:
    requests: int = 0
    retries: int = 0
    events: int = 0
    latencies: list[float] = field(default_factory=list)
    """Seconds from sending each accepted request to its answer (its last attempt)."""


@dataclass(frozen=True)
class GatewayReplayResult:
    oracle: Oracle
    events: int
    requests: int
    retries: int
    seconds: float
    latencies: list[float]


class GatewaySender:
    """POSTs bodies to ``url`` with ``token``, retrying on 429, 503 and transport failures until ``deadline_s``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        token: str,
        *,
        compress: bool = False,
        deadline_s: float = 600.0,
        timeout_s: float = 30.0,
        stats: SendStats | None = None,
    ) -> None:
        self.session = session
        self.url = url.rstrip("/") + "/v1/events" if not url.rstrip("/").endswith("/v1/events") else url
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
        if compress:
            self.headers["Content-Encoding"] = "gzip"
        self.compress = compress
        self.deadline_s = deadline_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.stats = stats or SendStats()

    async def send(self, body: bytes, events: int) -> dict[str, Any]:
        """Send until accepted; returns the 200 answer."""
        data = gzip.compress(body, 1) if self.compress else body
        give_up = time.monotonic() + self.deadline_s
        while True:
            started = time.monotonic()
            wait = 0.5
            try:
                async with self.session.post(self.url, data=data, headers=self.headers, timeout=self.timeout) as r:
                    payload = await r.read()
                    if r.status == 200:
                        answer: dict[str, Any] = msgspec.json.decode(payload)
                        self.stats.latencies.append(time.monotonic() - started)
                        self.stats.requests += 1
                        self.stats.events += int(answer["accepted"])
                        if answer["rejected"] or answer["accepted"] != events:
                            raise GatewayError(f"the gateway rejected events: {payload[:500]!r}")
                        return answer
                    if r.status not in (429, 503):
                        raise GatewayError(f"the gateway answered {r.status}: {payload[:500]!r}")
                    wait = float(r.headers.get("Retry-After", "1"))
            except (aiohttp.ClientError, TimeoutError):
                pass  # the events may have reached Kafka: sending them again is safe
            if time.monotonic() + wait > give_up:
                raise GatewayError(f"no 200 from {self.url} within {self.deadline_s:.0f} s")
            self.stats.retries += 1
            await asyncio.sleep(wait)


def _generate_in_child(profile: FairProfile, seed: int, queue: Any) -> None:
    replay = FairReplay(profile, seed)
    for minute in replay.minutes():
        queue.put((minute.start_ms, [(c, [_encode(e) for e in events]) for c, events in minute.by_channel.items()]))
    queue.put(replay.oracle)


async def generated_minutes(profile: FairProfile, seed: int, oracle: list[Oracle]) -> AsyncIterator[GatewayMinute]:
    """The fair's minutes, generated and encoded in a child process; the oracle is appended to ``oracle`` at the
    end."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue(maxsize=64)
    child = context.Process(target=_generate_in_child, args=(profile, seed, queue), daemon=True)
    child.start()
    loop = asyncio.get_running_loop()
    try:
        while True:
            item = await loop.run_in_executor(None, queue.get)
            if isinstance(item, Oracle):
                oracle.append(item)
                return
            yield item
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()


@dataclass
class _Body:
    body: bytes
    events: int
    due: float
    """Seconds after the start when it may be sent (0: at once)."""


async def send_minutes(
    minutes: AsyncIterator[GatewayMinute],
    senders: list[GatewaySender],
    *,
    batch: int = 500,
    speed: float = 0.0,
    rate: float = 0.0,
    on_minute: Callable[[int, int], None] | None = None,
) -> tuple[int, float]:
    """Send every minute's events, one connection per sender; ``speed`` N paces by event time (N times real
    time), ``rate`` by events per second. Returns the events sent and the seconds it took."""
    connections = len(senders)
    queues: list[asyncio.Queue[_Body | None]] = [asyncio.Queue(maxsize=8) for _ in range(connections)]
    owner: dict[str, int] = {}
    buffers: list[list[bytes]] = [[] for _ in range(connections)]
    started = time.monotonic()
    sent = 0

    async def connection(index: int) -> None:
        queue, sender = queues[index], senders[index]
        while (item := await queue.get()) is not None:
            delay = started + item.due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await sender.send(item.body, item.events)

    async def put(index: int) -> None:
        nonlocal sent
        lines = buffers[index]
        if lines:
            due = sent / rate if rate > 0 else 0.0
            sent += len(lines)
            buffers[index] = []
            await queues[index].put(_Body(b"\n".join(lines) + b"\n", len(lines), due))

    tasks = [asyncio.create_task(connection(i)) for i in range(connections)]

    async def feed() -> None:
        first: int | None = None
        async for start_ms, channels in minutes:
            if first is None:
                first = start_ms
            if speed > 0:
                delay = started + (start_ms - first) / 1000 / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            for channel_id, events in channels:
                index = owner.setdefault(channel_id, len(owner) % connections)
                for event in events:
                    buffers[index].append(event)
                    if len(buffers[index]) >= batch:
                        await put(index)
            if speed > 0:
                for index in range(connections):
                    await put(index)
            if on_minute is not None:
                on_minute(start_ms, sent + sum(map(len, buffers)))
        for index in range(connections):
            await put(index)
            await queues[index].put(None)

    feeder = asyncio.create_task(feed())
    try:
        # A connection that fails for good fails the whole send at once.
        pending: set[asyncio.Task[None]] = {feeder, *tasks}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
    finally:
        for task in (feeder, *tasks):
            task.cancel()
    return sent, time.monotonic() - started


async def replay_via_gateway(
    url: str,
    token: str,
    profile: FairProfile,
    seed: int,
    *,
    batch: int = 500,
    connections: int = 8,
    speed: float = 0.0,
    compress: bool = False,
    on_minute: Callable[[int, int], None] | None = None,
) -> GatewayReplayResult:
    """Send the fair of ``(profile, seed)`` through the gateway at ``url``; returns its oracle and what was sent."""
    oracle: list[Oracle] = []
    stats = SendStats()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        senders = [GatewaySender(session, url, token, compress=compress, stats=stats) for _ in range(connections)]
        events, seconds = await send_minutes(
            generated_minutes(profile, seed, oracle), senders, batch=batch, speed=speed, on_minute=on_minute
        )
    if not oracle:
        raise RuntimeError("replay generator process failed")
    if stats.events != events:
        raise GatewayError(f"{events} events sent, {stats.events} accepted")
    return GatewayReplayResult(oracle[0], events, stats.requests, stats.retries, seconds, stats.latencies)
