"""Throughput and request latency through one ingestion gateway process (``livestream gateway``).

A worker and a gateway run on a fresh namespace. The fair (``--gateway-scale``) is generated and encoded before
the clock starts, then sent as NDJSON requests of ``batch`` (500) events from ``connections`` (8) concurrent
clients in this process (each livestream on one connection, see ``livestream/gateway_client.py``).

- ``gateway_eps``: events / seconds from the first request until the worker's totals in Redis equal the oracle
  (every livestream's counters and the campaign summary), so it covers HTTP, validation, packing, Kafka and the
  worker, all on this machine.
- ``gateway_p99_ms``: then, on a second fresh namespace (worker and gateway), the fair's first events are sent
  paced at ``load`` (0.5) times that rate for ``latency_seconds``, and each request's latency (sent -> 200
  answer, seen by the client) is kept; p50 and p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp

from agents.startup import ensure_topics
from livestream.bench.common import BenchError, cpu_seconds, log, percentile
from livestream.bench.pipeline import stop_worker, wait_ready, wait_redis_exact
from livestream.gateway_client import GatewayMinute, GatewaySender, SendStats, send_minutes
from livestream.processes import start_gateway, start_worker, stop_process
from stream.ingest import generate_token
from stream.replay.generator import FairReplay
from stream.replay.profile import OCOP_FAIR, scaled
from stream.settings import Settings


@dataclass(frozen=True)
class GatewayBenchResult:
    eps: float
    events: int
    seconds: float
    gateway_cpu_s_per_m: float
    rate: float
    achieved_rate: float
    p50_ms: float
    p99_ms: float
    samples: int
    retries: int


def encoded_fair(scale: float, seed: int) -> tuple[list[GatewayMinute], FairReplay]:
    import msgspec

    encode = msgspec.json.Encoder().encode
    replay = FairReplay(scaled(OCOP_FAIR, scale), seed)
    minutes = [
        (m.start_ms, [(c, [encode(e) for e in events]) for c, events in m.by_channel.items()]) for m in replay.minutes()
    ]
    return minutes, replay


async def _iterate(minutes: list[GatewayMinute], limit: int | None = None) -> AsyncIterator[GatewayMinute]:
    count = 0
    for start, channels in minutes:
        if limit is not None:
            kept: list[tuple[str, list[bytes]]] = []
            for channel_id, events in channels:
                take = events[: max(0, limit - count)]
                count += len(take)
                if take:
                    kept.append((channel_id, take))
            if kept:
                yield start, kept
            if count >= limit:
                return
        else:
            yield start, channels


async def _send(
    url: str, token: str, minutes: AsyncIterator[GatewayMinute], batch: int, connections: int, rate: float = 0.0
) -> tuple[int, float, SendStats]:
    stats = SendStats()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        senders = [GatewaySender(session, url, token, stats=stats) for _ in range(connections)]
        events, seconds = await send_minutes(minutes, senders, batch=batch, rate=rate)
    return events, seconds, stats


def measure_gateway(
    settings: Settings,
    latency_settings: Settings,
    scale: float,
    seed: int,
    *,
    batch: int = 500,
    connections: int = 8,
    load: float = 0.5,
    latency_seconds: float = 15.0,
) -> GatewayBenchResult:
    """Throughput on ``settings``' namespace, then latency on ``latency_settings``' (a fresh worker and gateway:
    resending events hours of event time later would count them again, see docs/contracts.md)."""
    minutes, replay = encoded_fair(scale, seed)
    total = sum(len(events) for _, channels in minutes for _, events in channels)
    log(f"gateway: {total:,} events encoded; starting a worker and a gateway")
    token = generate_token()
    with _pipeline(settings, token) as (url, gateway):
        cpu0 = cpu_seconds(gateway.pid)
        started = time.monotonic()
        events, send_seconds, stats = asyncio.run(_send(url, token, _iterate(minutes), batch, connections))
        if events != total or stats.events != total:
            raise BenchError(f"sent {events} events, {stats.events} accepted, {total} in the fair")
        log(f"gateway: {total:,} events accepted in {send_seconds:.1f} s ({stats.retries} retries); waiting for Redis")
        wait_redis_exact(settings, OCOP_FAIR.campaign, replay.oracle, timeout=300)
        seconds = time.monotonic() - started
        cpu = cpu_seconds(gateway.pid) - cpu0
    eps = total / seconds
    rate = load * eps
    count = min(total, int(rate * latency_seconds))
    log(f"gateway: {eps:,.0f} events/s; latency at {rate:,.0f} events/s for {count / rate:.0f} s")
    with _pipeline(latency_settings, token) as (url, gateway):
        sent, paced_seconds, paced = asyncio.run(
            _send(url, token, _iterate(minutes, count), batch, connections, rate=rate)
        )
        if sent != count or paced.events != count:
            raise BenchError(f"latency run: sent {sent} events, {paced.events} accepted, {count} wanted")
    ms = [x * 1000 for x in paced.latencies]
    return GatewayBenchResult(
        eps=eps,
        events=total,
        seconds=seconds,
        gateway_cpu_s_per_m=cpu / total * 1_000_000,
        rate=rate,
        achieved_rate=sent / paced_seconds,
        p50_ms=percentile(ms, 50),
        p99_ms=percentile(ms, 99),
        samples=len(ms),
        retries=stats.retries + paced.retries,
    )


@contextlib.contextmanager
def _pipeline(settings: Settings, token: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A worker and a gateway on ``settings``' namespace, stopped afterwards."""
    asyncio.run(ensure_topics(settings))
    root = settings.data_dir.parent
    worker = start_worker(settings, root / "gateway-worker.log")
    gateway = None
    try:
        wait_ready(settings.web_port, worker, root / "gateway-worker.log")
        gateway, url = start_gateway(settings, token, root / "gateway.log")
        yield url, gateway
        if gateway.poll() is not None or worker.poll() is not None:
            raise BenchError("the gateway or the worker exited")
    finally:
        if gateway is not None:
            stop_process(gateway)
        stop_worker(worker)
