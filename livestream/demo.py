"""``livestream demo``: local Kafka and Redis, one worker, the OCOP fair replayed, live counters read back.

Each demo run uses a fresh namespace (``demo<unix time>``) unless ``--namespace`` is given, so topics, consumer group
and Redis keys of earlier runs never add to its numbers. It waits until the totals in Redis equal the replay's
oracle (or the worker has committed everything and the totals stopped moving), then reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
from aiokafka.admin import AIOKafkaAdminClient

from agents.startup import ensure_topics
from livestream import readback, services
from livestream.lag import consumer_lag
from livestream.producer import replay_fair
from stream.replay.profile import OCOP_FAIR, scaled
from stream.settings import Settings


def log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``livestream worker`` as a child process with ``settings`` passed through the environment."""
    env = dict(os.environ)
    env.update(
        LIVESTREAM_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        LIVESTREAM_REDIS_URL=settings.redis_url,
        LIVESTREAM_NAMESPACE=settings.namespace,
        LIVESTREAM_WEB_PORT=str(settings.web_port),
        LIVESTREAM_DATA_DIR=str(settings.data_dir),
        LIVESTREAM_PARTITIONS=str(settings.partitions),
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "livestream", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def _delete_topics(bootstrap: str, prefix_pattern: re.Pattern[str], keep: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        old = [t for t in await admin.list_topics() if prefix_pattern.match(t) and not t.startswith(keep)]
        if old:
            await admin.delete_topics(old)
        return old
    finally:
        await admin.close()


def remove_earlier_demos(settings: Settings) -> None:
    """Delete the topics, Redis keys and state folders of earlier ``demo<unix time>`` namespaces (best effort)."""
    pattern = re.compile(r"^demo\d+[.-]")
    try:
        topics = asyncio.run(_delete_topics(settings.kafka_bootstrap, pattern, settings.namespace))
        client = redis.Redis.from_url(settings.redis_url)
        key_pattern = re.compile(r"^demo\d+:")
        keys = [
            k
            for k in client.scan_iter("demo*", count=1000)
            if key_pattern.match(k.decode(errors="replace"))
            and not k.decode(errors="replace").startswith(settings.redis_prefix)
        ]
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        for folder in Path(".cache/demo").glob("demo*"):
            if folder.name != settings.namespace:
                shutil.rmtree(folder, ignore_errors=True)
        if topics or keys:
            log(f"removed {len(topics)} topics and {len(keys)} Redis keys of earlier demos")
    except Exception as exc:
        log(f"could not remove earlier demos: {exc!r}")


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_http(url: str, timeout: float, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


def wait_caught_up(
    settings: Settings, campaign: str, expected: dict[str, int], timeout: float, worker: subprocess.Popen[bytes]
) -> dict[str, int]:
    """Poll Redis until the campaign summary equals ``expected``, or the group has no lag and totals are stable."""
    client = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + timeout
    last: dict[str, int] = {}
    stable_since = time.monotonic()
    while True:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}; see {settings.data_dir / 'worker.log'}")
        current = readback.summary(readback.read_campaign(client, settings.redis_prefix, campaign))
        if current == expected:
            return current
        now = time.monotonic()
        if current != last:
            last, stable_since = current, now
        elif now - stable_since > 15:
            lag = asyncio.run(consumer_lag(settings.kafka_bootstrap, settings.app_id, settings.events_topic))
            if lag == 0:
                return current
        if now > deadline:
            return current
        time.sleep(0.2)


def read_metrics(port: int) -> dict[str, float]:
    """Unlabelled fair-wide samples from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def run_demo(
    overrides: dict[str, Any], *, once: bool, scale: float, seed: int, batch: int, speed: float, timeout: float
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
    worker = start_worker(settings, settings.data_dir / "worker.log")
    try:
        wait_http(f"http://127.0.0.1:{settings.web_port}/api/totals", 120, worker)
        log(
            f"worker up (namespace {namespace}); ops board http://127.0.0.1:{settings.web_port}/ , "
            f"metrics http://127.0.0.1:{settings.web_port}/metrics; replaying the fair"
        )
        started = time.monotonic()
        result = asyncio.run(replay_fair(settings, scale=scale, seed=seed, batch=batch, speed=speed, progress=True))
        expected = result.oracle.summary()
        log(
            f"produced {result.events:,} events in {result.records:,} records in {result.seconds:.1f} s; "
            "waiting for the pipeline to catch up"
        )
        totals = wait_caught_up(settings, profile.campaign, expected, timeout, worker)
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
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()


def _serve(
    settings: Settings, campaign: str, expected: dict[str, int], totals: dict[str, int], elapsed: float, events: int
) -> None:
    """Print the counters, then refresh them every 2 s until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live

    from livestream.render import channel_table

    console = Console()
    client = redis.Redis.from_url(settings.redis_url)
    channels = readback.read_channels(client, settings.redis_prefix, campaign)
    full = readback.read_campaign(client, settings.redis_prefix, campaign)
    console.print(channel_table(campaign, channels, full))
    metrics = read_metrics(settings.web_port)
    console.print(
        f"Redis totals  {json.dumps(totals)}\n"
        f"/metrics      views={metrics.get('livestream_views_total', 0):,.0f} "
        f"orders={metrics.get('livestream_orders_paid_total', 0):,.0f} "
        f"gmv_vnd={metrics.get('livestream_gmv_vnd_total', 0):,.0f}\n"
        f"oracle        {json.dumps(expected)}  -> {'EXACT' if totals == expected else 'MISMATCH'}\n"
        f"{events:,} events in {elapsed:.1f} s ({events / elapsed:,.0f} events/s)\n"
        f"ops board: http://127.0.0.1:{settings.web_port}/   also /metrics /api/board /api/totals   (Ctrl-C to stop)"
    )
    try:
        with Live(console=console, refresh_per_second=1) as live:
            while True:
                channels = readback.read_channels(client, settings.redis_prefix, campaign)
                full = readback.read_campaign(client, settings.redis_prefix, campaign)
                live.update(channel_table(campaign, channels, full))
                time.sleep(2)
    except KeyboardInterrupt:
        pass
