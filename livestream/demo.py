"""``livestream demo``: local Kafka and Redis, one worker, the OCOP fair replayed, live counters read back.

Each demo run uses a fresh namespace (``demo<unix time>``) unless ``--namespace`` is given, so topics, consumer group
and Redis keys of earlier runs never add to its numbers. It waits until the totals in Redis equal the replay's
oracle (or the worker has committed everything and the totals stopped moving), then reports.

SIGTERM (``timeout``, systemd, ``docker stop``) or SIGINT (Ctrl-C) stops the worker and every other child process
(SIGTERM, up to :data:`livestream.processes.STOP_GRACE_S` seconds, then SIGKILL) and exits with 143 or 130
(:func:`livestream.processes.children_stopped_on_signals`, also used by ``livestream bench``).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import redis

from agents.startup import ensure_topics
from livestream import readback, services
from livestream.processes import (
    SupervisedWorker,
    WorkerExitedError,
    children_stopped_on_signals,
    log,
    port_in_use,
    read_metrics,
    remove_earlier_demos,
    start_gateway,
    stop_process,
    until_worker_exits,
    wait_caught_up,
    wait_http,
)
from livestream.producer import replay_fair
from stream.replay.profile import OCOP_FAIR, scaled
from stream.settings import Settings


def run_demo(
    overrides: dict[str, Any],
    *,
    once: bool,
    scale: float,
    seed: int,
    batch: int,
    speed: float,
    timeout: float,
    via_gateway: bool = False,
) -> int:
    """The demo; its exit code (0 exact, 1 mismatch with ``--once``, 2 port in use; 143/130 on SIGTERM/SIGINT)."""
    with children_stopped_on_signals():
        return _run_demo(
            overrides,
            once=once,
            scale=scale,
            seed=seed,
            batch=batch,
            speed=speed,
            timeout=timeout,
            via_gateway=via_gateway,
        )


def _run_demo(
    overrides: dict[str, Any],
    *,
    once: bool,
    scale: float,
    seed: int,
    batch: int,
    speed: float,
    timeout: float,
    via_gateway: bool = False,
) -> int:
    namespace = overrides.get("namespace") or f"demo{int(time.time())}"
    settings = Settings(
        **{
            **overrides,
            "namespace": namespace,
            "data_dir": overrides.get("data_dir") or Path(".cache/demo") / namespace,
        }
    )
    log("starting services")
    services.up()
    if not overrides.get("namespace"):
        remove_earlier_demos(settings)
    profile = scaled(OCOP_FAIR, scale) if scale != 1.0 else OCOP_FAIR
    asyncio.run(ensure_topics(settings))
    if port_in_use(settings.web_port):
        log(f"port {settings.web_port} is in use: stop what runs there or pass --web-port")
        return 2
    worker = SupervisedWorker(settings, settings.data_dir / "worker.log")
    try:
        wait_http(f"http://127.0.0.1:{settings.web_port}/api/totals", 120, worker)
        log(
            f"worker up (namespace {namespace}); ops board http://127.0.0.1:{settings.web_port}/ , "
            f"metrics http://127.0.0.1:{settings.web_port}/metrics, terminal table: "
            f".venv/bin/livestream --namespace {namespace} status; replaying the fair"
        )
        started = time.monotonic()
        try:
            if via_gateway:
                result = _replay_via_gateway(settings, profile, worker, seed=seed, batch=batch, speed=speed)
            else:
                replay = replay_fair(settings, scale=scale, seed=seed, batch=batch, speed=speed, progress=True)
                result = asyncio.run(until_worker_exits(replay, worker))
            expected = result.oracle.summary()
            log(
                f"produced {result.events:,} events in {result.records:,} records in {result.seconds:.1f} s; "
                "waiting for the pipeline to catch up"
            )
            totals = wait_caught_up(settings, profile.campaign, expected, timeout, worker)
        except WorkerExitedError as exc:
            log(f"{exc}: replay stopped")
            return 1
        elapsed = time.monotonic() - started
        ok = totals == expected
        if once:
            print(
                json.dumps(
                    {
                        **totals,
                        "replay_seconds": round(elapsed, 2),
                        "events": result.events,
                        "events_per_second": round(result.events / elapsed),
                        "produce_seconds": round(result.seconds, 2),
                        "exact": ok,
                    }
                )
            )
            if not ok:
                log(f"MISMATCH: expected {expected}")
            return 0 if ok else 1
        _serve(settings, profile.campaign, expected, totals, elapsed, result.events)
        return 0
    finally:
        worker.stop(grace_s=60)


def _replay_via_gateway(
    settings: Settings, profile: Any, worker: SupervisedWorker, *, seed: int, batch: int, speed: float
) -> Any:
    """The fair sent through a gateway started for the demo; a result with the fields the demo reports."""
    from livestream.gateway_client import replay_via_gateway
    from livestream.producer import ReplayResult, progress_printer
    from stream.ingest import generate_token

    token = generate_token()
    gateway, url = start_gateway(settings, token, settings.data_dir / "gateway.log")
    try:
        log(f"gateway up at {url}; sending the fair through it")
        minutes = (profile.end_ms - profile.start_ms) // 60_000
        sending = replay_via_gateway(
            url, token, profile, seed, batch=batch, speed=speed, on_minute=progress_printer(minutes)
        )
        sent = asyncio.run(until_worker_exits(sending, worker))
    finally:
        stop_process(gateway)
    return ReplayResult(oracle=sent.oracle, records=sent.requests, events=sent.events, seconds=sent.seconds)


def _serve(
    settings: Settings, campaign: str, expected: dict[str, int], totals: dict[str, int], elapsed: float, events: int
) -> None:
    """Print the counters, then refresh them every 2 s until Ctrl-C or SIGTERM (which exit 130 / 143)."""
    from rich.live import Live

    from livestream.render import channel_table
    from livestream.render import console as table_console

    console = table_console()
    client = redis.Redis.from_url(settings.redis_url)
    channels = readback.read_channels(client, settings.redis_prefix, campaign)
    full = readback.read_campaign(client, settings.redis_prefix, campaign)
    console.print(channel_table(campaign, channels, full))
    metrics = read_metrics(settings.web_port)
    console.print(
        f"Redis totals  {json.dumps(totals)}\n"
        f"/metrics      views={metrics.get('livestream_owned_views', 0):,.0f} "
        f"orders={metrics.get('livestream_owned_orders_paid', 0):,.0f} "
        f"gmv_vnd={metrics.get('livestream_owned_gmv_vnd', 0):,.0f}\n"
        f"oracle        {json.dumps(expected)}  -> {'EXACT' if totals == expected else 'MISMATCH'}\n"
        f"{events:,} events in {elapsed:.1f} s ({events / elapsed:,.0f} events/s)\n"
        f"ops board: http://127.0.0.1:{settings.web_port}/   also /metrics /api/board /api/totals   (Ctrl-C to stop)"
    )
    with Live(console=console, refresh_per_second=1) as live:
        while True:
            channels = readback.read_channels(client, settings.redis_prefix, campaign)
            full = readback.read_campaign(client, settings.redis_prefix, campaign)
            live.update(channel_table(campaign, channels, full))
            time.sleep(2)
