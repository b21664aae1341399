"""Scaling: events/s of 1, 2 and 3 workers in one consumer group on the same prefilled single-event fair.

For each worker count N a fresh namespace (12 partitions) is filled with the fair as single-event records (the
``single`` step's topic), then N ``livestream worker`` processes are started at the same moment, as the tests
start them, each with its own state folder and HTTP port. Every ``poll_s`` each worker's ``/api/totals``
``events_processed`` is read (a worker that does not answer keeps its last value) and summed over the workers,
with the CPU time of the N processes. Until the group is complete (every worker owns partitions, together all of
them, from ``/metrics``) each worker's owned partitions are read too.

Two intervals come out of the same series of samples (:func:`scaling_throughput`):

- **whole**: from the first sample that sees a processed event (on any worker) to the first that sees all of
  them. Events in hand at the first sample are not counted (as the single step). This includes the group's
  start: the first worker to join gets every partition and starts alone, then a rebalance for each worker that
  joins after it, and at the end the tail where only the worker with the biggest partitions is still busy;
- **steady**: the same, but from the first sample at which the group was complete.

Afterwards every livestream's counters in Redis must equal the replay oracle's, and the workers' summed
``events_processed`` must equal the events produced (more would mean events applied twice).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from livestream.bench.common import (
    BenchError,
    Throughput,
    WorkerHealth,
    cpu_seconds,
    log,
    report_log_problems,
    start_worker_env,
    stop_workers,
    worker_health,
    worker_settings,
)
from livestream.bench.pipeline import api_totals, wait_redis_exact
from stream.replay.oracle import Oracle
from stream.settings import Settings

WORKER_COUNTS = (1, 2, 3)


@dataclass(frozen=True)
class ScalingSample:
    at: float
    """Monotonic clock of the sample."""
    processed: tuple[int, ...]
    """``events_processed`` of each worker."""
    complete: bool
    """Every worker owned partitions and together they owned all of them (checked until first true)."""
    cpu_s: float
    """CPU seconds of all the workers' processes so far."""


@dataclass(frozen=True)
class ScalingResult:
    workers: int
    whole: Throughput
    """First processed event (any worker) to the last one."""
    steady: Throughput | None
    """From the group being complete to the last event (None if it completed only at the end)."""
    settle_s: float | None
    """Workers started -> the group complete (every worker owns partitions)."""
    per_worker: tuple[int, ...]
    """Events each worker processed."""
    log_problems: int

    @property
    def eps_per_worker(self) -> float:
        return self.whole.eps / self.workers


def scaling_throughput(samples: Sequence[ScalingSample], expected: int) -> tuple[Throughput, Throughput | None]:
    """(whole, steady) throughput of a series of samples whose last one saw all ``expected`` events.

    whole: from the first sample with any processed event; steady: from the first sample at or after that one at
    which the group was complete (None if that is the last sample). Events already processed at the start sample
    are not counted; CPU time is the workers' summed CPU time between the two samples."""
    if not samples or sum(samples[-1].processed) != expected:
        raise BenchError("the last sample does not hold every expected event")
    last = samples[-1]
    first_index = next(i for i, s in enumerate(samples) if sum(s.processed) > 0)

    def between(start: ScalingSample) -> Throughput:
        return Throughput(expected - sum(start.processed), last.at - start.at, last.cpu_s - start.cpu_s, expected)

    whole = between(samples[first_index])
    complete = next((s for s in samples[first_index:] if s.complete), None)
    steady = None if complete is None or complete is last else between(complete)
    return whole, steady


def group_complete(healths: Sequence[WorkerHealth | None], partitions: int) -> bool:
    """Every worker answered and owns partitions, no partition twice, every partition once."""
    seen: set[int] = set()
    for health in healths:
        if health is None or not health.owned or health.owned & seen:
            return False
        seen |= health.owned
    return seen == set(range(partitions))


def measure_scaling(
    settings: Settings,
    workers: int,
    oracle: Oracle,
    campaign: str,
    events: int,
    *,
    poll_s: float = 0.1,
    timeout: float = 900,
) -> ScalingResult:
    """Start ``workers`` workers together on the prefilled events topic of ``settings``, follow them until they
    processed ``events`` between them, check Redis against the oracle, stop them."""
    root = settings.data_dir.parent
    names = [f"{workers}w-{i}" for i in range(workers)]
    configs = [worker_settings(settings, name) for name in names]
    logs = [root / f"scaling-{name}.log" for name in names]
    procs: list[subprocess.Popen[bytes]] = []
    pool = ThreadPoolExecutor(2 * workers, thread_name_prefix="scaling-poll")
    try:
        started = time.monotonic()
        procs.extend(start_worker_env(config, path) for config, path in zip(configs, logs, strict=True))
        ports = [config.web_port for config in configs]
        processed = [0] * workers
        samples: list[ScalingSample] = []
        complete_at: float | None = None
        deadline = started + timeout
        while True:
            for i, proc in enumerate(procs):
                if proc.poll() is not None:
                    raise BenchError(f"worker {names[i]} exited with {proc.returncode}; log {logs[i]}")
            # Every worker at once: one busy worker must not delay the others' readings.
            totals = [pool.submit(api_totals, port, 2) for port in ports]
            healths = [pool.submit(worker_health, port) for port in ports] if complete_at is None else []
            for i, future in enumerate(totals):
                answer = future.result()
                if answer is not None:
                    processed[i] = int(answer["events_processed"])
            now = time.monotonic()
            if healths and group_complete([future.result() for future in healths], settings.partitions):
                complete_at = now
            cpu = sum(cpu_seconds(proc.pid) for proc in procs)
            samples.append(ScalingSample(now, tuple(processed), complete_at is not None, cpu))
            total = sum(processed)
            if total > events:
                raise BenchError(f"{workers} workers processed {total} events, {events} were produced")
            if total == events:
                break
            if now > deadline:
                raise BenchError(f"{workers} workers processed {total} of {events} events in {timeout:.0f} s")
            time.sleep(poll_s)
        whole, steady = scaling_throughput(samples, events)
        log(
            f"scaling {workers}w: {whole.events:,} events in {whole.seconds:.2f} s ({whole.eps:,.0f}/s); "
            f"group complete after {_fmt_s(complete_at, started)}; per worker {list(processed)}; "
            "checking Redis against the oracle"
        )
        wait_redis_exact(settings, campaign, oracle)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_workers(procs)
    problems = report_log_problems(f"scaling {workers}w", logs)
    return ScalingResult(
        workers,
        whole,
        steady,
        None if complete_at is None else complete_at - started,
        tuple(processed),
        problems,
    )


def _fmt_s(at: float | None, started: float) -> str:
    return "-" if at is None else f"{at - started:.1f} s"
