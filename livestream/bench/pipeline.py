"""Our full pipeline as a benchmark subject: a ``livestream worker`` process on a prefilled events topic.

The worker is started as the tests start it (``python -m livestream worker`` with ``LIVESTREAM_*`` settings in the
environment). Its progress is read from ``/api/totals`` (``events_processed``) every ``poll_s``; the interval runs
from the first poll that sees processed events to the first that sees all of them, and the CPU time is the
worker's own (every thread, from /proc). Afterwards every livestream's counters in Redis must equal the replay
oracle's, or the measurement fails.
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import redis

from livestream import readback
from livestream.bench.common import BenchError, Throughput, cpu_seconds, log
from livestream.processes import start_worker
from stream.replay.oracle import Oracle
from stream.settings import Settings
from stream.state import COUNTER_FIELDS


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def api_totals(port: int, timeout: float = 5) -> dict[str, Any] | None:
    """The worker's ``/api/totals``, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/totals", timeout=timeout) as response:
            data: dict[str, Any] = msgspec.json.decode(response.read())
            return data
    except OSError:
        return None


def wait_ready(port: int, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"worker exited with {proc.returncode}; log {log_path}")
        totals = api_totals(port)
        if totals is not None and totals.get("ready"):
            return
        time.sleep(0.2)
    raise BenchError(f"worker on port {port} not ready in {timeout:.0f} s; log {log_path}")


def follow_progress(
    port: int,
    proc: subprocess.Popen[bytes],
    expected_events: int,
    log_path: Path,
    *,
    poll_s: float = 0.05,
    timeout: float = 600,
) -> Throughput:
    """Poll ``events_processed`` until it reaches ``expected_events``; the throughput between first and last sight."""
    deadline = time.monotonic() + timeout
    first: tuple[float, int, float] | None = None
    while True:
        if proc.poll() is not None:
            raise BenchError(f"worker exited with {proc.returncode}; log {log_path}")
        totals = api_totals(port)
        now, cpu = time.monotonic(), cpu_seconds(proc.pid)
        processed = int(totals["events_processed"]) if totals else 0
        if processed and first is None:
            first = (now, processed, cpu)
        if processed >= expected_events and first is not None:
            if processed > expected_events:
                raise BenchError(f"worker processed {processed} events, {expected_events} were produced")
            return Throughput(processed - first[1], now - first[0], cpu - first[2], processed)
        if now > deadline:
            raise BenchError(f"worker processed {processed} of {expected_events} events in {timeout:.0f} s")
        time.sleep(poll_s)


def redis_mismatch(settings: Settings, campaign: str, oracle: Oracle) -> str | None:
    """None if every livestream's counters and the campaign summary in Redis equal the oracle's; else the first
    difference found."""
    client = redis.Redis.from_url(settings.redis_url)
    channels = readback.read_channels(client, settings.redis_prefix, campaign)
    if set(channels) != set(oracle.channels):
        return f"livestreams in Redis {len(channels)}, oracle {len(oracle.channels)}"
    for channel_id, expected in oracle.channels.items():
        got = channels[channel_id]
        for name in COUNTER_FIELDS:
            if int(got.get(name, 0)) != getattr(expected, name):
                return f"{channel_id}.{name}: Redis {got.get(name)}, oracle {getattr(expected, name)}"
    summary = readback.summary(readback.read_campaign(client, settings.redis_prefix, campaign))
    if summary != oracle.summary():
        return f"campaign summary: Redis {summary}, oracle {oracle.summary()}"
    return None


def wait_redis_exact(settings: Settings, campaign: str, oracle: Oracle, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            mismatch = redis_mismatch(settings, campaign, oracle)
        except redis.ConnectionError as exc:  # Redis restarting: keep asking until the deadline
            mismatch = f"Redis unreachable: {exc}"
        if mismatch is None:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"Redis totals are not exact after {timeout:.0f} s: {mismatch}")
        time.sleep(0.25)


def measure_pipeline(
    settings: Settings, oracle: Oracle, campaign: str, events: int, label: str, *, timeout: float = 900
) -> Throughput:
    """Start a worker on the prefilled events topic, measure it until it processed ``events``, check Redis."""
    log_path = settings.data_dir.parent / f"{label}-worker.log"
    proc = start_worker(settings, log_path)
    try:
        result = follow_progress(settings.web_port, proc, events, log_path, timeout=timeout)
        log(f"{label}: {result.events:,} events in {result.seconds:.2f} s; checking Redis against the oracle")
        wait_redis_exact(settings, campaign, oracle)
        return result
    finally:
        stop_worker(proc)
