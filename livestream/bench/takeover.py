"""Takeover: how long partitions stay frozen when their owner dies or leaves, or when a worker joins.

For one ``LIVESTREAM_STANDBY_REPLICAS`` setting: a fresh namespace with 4 partitions, workers with
``LIVESTREAM_IDLE_TICK_S=1`` (so every owned partition gets a record each second and reports its lag even while
its livestreams are quiet). Two workers (``a``, ``b``) start and settle; then ``livestream replay`` (a child
process) sends the fair at ``scale`` as single-event records, *paced* so that it lasts ``replay_s`` seconds: the
workers run live, on small batches, building state and changelogs. After ``warmup_s`` seconds, while the replay
goes on:

1. ``kill9``: ``b`` is killed with SIGKILL; ``a`` alone must take over;
2. ``join``: a new worker ``c`` (empty state folder) is started; the group rebalances to ``a`` and ``c``;
3. ``sigterm``: ``a`` gets SIGTERM (a graceful stop: it commits and leaves the group); ``c`` alone must take over.

Each time is measured from the event (the signal sent, the new process started) to the first poll of the remaining
workers' ``/metrics`` (every ``poll_s``) at which the group is *settled* (:func:`settled`): every remaining worker
answers and is ready (``livestream_worker_ready``: assigned, tables recovered, nothing stalled), they own every
partition between them (each one owning some, no partition twice), and each partition reports a lag under
``max_lag`` records and progress (``livestream_partition_last_progress_timestamp_seconds``) after the event.
A partition's lag is only reported once its owner has processed a record of it in the current assignment, so
a small lag means the new owner has read (nearly) up to the end of the partition, past the event. A kill -9
includes the consumer group's failure detection (session timeout 10 s, agents/app.py); a SIGTERM and a join
rebalance at once (the remaining workers hear of it at their next heartbeat, every 2 s). Two intermediate marks
come from the same polls: ``owned_s``, every partition has an owner again, and ``ready_s``, besides, every worker
is ready (its tables recovered).

At the end, once the replay has finished, every livestream's counters in Redis must equal the oracle's.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agents.startup import ensure_topics
from livestream.bench.common import (
    BenchError,
    WorkerHealth,
    livestream_command,
    log,
    report_log_problems,
    start_worker_env,
    stop_workers,
    worker_health,
    worker_settings,
)
from livestream.bench.pipeline import wait_redis_exact
from livestream.processes import stop_process
from stream.replay.generator import FairReplay
from stream.replay.oracle import Oracle
from stream.replay.profile import OCOP_FAIR, FairProfile, scaled
from stream.settings import Settings

EVENTS = ("kill9", "join", "sigterm")
MAX_LAG = 1000
"""A partition has caught up again when its owner reports fewer records than this waiting."""


@dataclass(frozen=True)
class Poll:
    at: float
    """Wall clock (epoch seconds) when the poll started."""
    workers: Mapping[str, WorkerHealth | None]
    """Every worker expected in the group -> its health, or None if it did not answer."""


def ownership_complete(workers: Mapping[str, WorkerHealth | None], partitions: int) -> bool:
    """Every expected worker answers and, if there are enough partitions, owns some; every partition has exactly
    one owner among them."""
    seen: set[int] = set()
    for health in workers.values():
        if health is None or (partitions >= len(workers) and not health.owned) or health.owned & seen:
            return False
        seen |= health.owned
    return seen == set(range(partitions))


def settled(workers: Mapping[str, WorkerHealth | None], partitions: int, since: float, max_lag: int = MAX_LAG) -> bool:
    """Ownership complete, every worker ready, and every partition with a reported lag under ``max_lag`` and
    progress at or after ``since`` (epoch seconds)."""
    if not ownership_complete(workers, partitions):
        return False
    for health in workers.values():
        assert health is not None  # ownership_complete checked it
        if not health.ready:
            return False
        for partition in health.owned:
            lag = health.lag.get(partition)
            progress = health.progress.get(partition)
            if lag is None or lag >= max_lag or progress is None or progress < since:
                return False
    return True


@dataclass(frozen=True)
class Takeover:
    owned_s: float | None
    """Event -> first poll at which every partition had an owner (None: never)."""
    ready_s: float | None
    """Event -> first poll at which, besides, every worker was ready (tables recovered)."""
    settled_s: float | None
    """Event -> first poll at which the group was settled: besides, every partition caught up (None: never)."""


def takeover_times(polls: Sequence[Poll], since: float, partitions: int, max_lag: int = MAX_LAG) -> Takeover:
    """From a series of polls (in time order), the times from the event at ``since`` to ownership complete, to
    every worker ready as well, and to settled; polls started before the event are ignored."""
    owned = ready = settled_at = None
    for poll in polls:
        if poll.at < since:
            continue
        if not ownership_complete(poll.workers, partitions):
            continue
        if owned is None:
            owned = poll.at - since
        if ready is None and all(health is not None and health.ready for health in poll.workers.values()):
            ready = poll.at - since
        if settled(poll.workers, partitions, since, max_lag):
            settled_at = poll.at - since
            break
    return Takeover(owned, ready, settled_at)


@dataclass
class Worker:
    name: str
    settings: Settings
    proc: subprocess.Popen[bytes]
    log_path: Path


@dataclass(frozen=True)
class TakeoverResult:
    standby: int
    times: dict[str, Takeover]
    """By event: ``kill9``, ``join``, ``sigterm``."""
    events: int
    speed: float
    log_problems: int
    notes: list[str] = field(default_factory=list)


def fair_oracle(profile: FairProfile, seed: int) -> Oracle:
    """The oracle of the fair ``livestream replay --scale --seed`` sends (generated here, deterministic)."""
    replay = FairReplay(profile, seed)
    for _ in replay.minutes():
        pass
    return replay.oracle


class Group:
    """The workers of one namespace, started with the same extra environment."""

    def __init__(self, settings: Settings, env: Mapping[str, str], label: str, poll_s: float) -> None:
        self.settings = settings
        self.env = env
        self.label = label
        self.poll_s = poll_s
        self.workers: dict[str, Worker] = {}
        self.root = settings.data_dir.parent

    def start(self, name: str) -> Worker:
        config = worker_settings(self.settings, name)
        log_path = self.root / f"{self.label}-worker-{name}.log"
        worker = Worker(name, config, start_worker_env(config, log_path, self.env), log_path)
        self.workers[name] = worker
        return worker

    def check_alive(self, names: Sequence[str]) -> None:
        for name in names:
            worker = self.workers[name]
            if worker.proc.poll() is not None:
                raise BenchError(f"worker {name} exited with {worker.proc.returncode}; log {worker.log_path}")

    def poll(self, names: Sequence[str]) -> Poll:
        self.check_alive(names)
        at = time.time()
        return Poll(at, {name: worker_health(self.workers[name].settings.web_port) for name in names})

    def wait_settled(self, names: Sequence[str], since: float, timeout: float, what: str) -> Takeover:
        polls: list[Poll] = []
        while True:
            poll = self.poll(names)
            polls.append(poll)
            if settled(poll.workers, self.settings.partitions, since):
                result = takeover_times(polls, since, self.settings.partitions)
                log(
                    f"{self.label} {what}: every partition owned after {result.owned_s:.1f} s, workers ready after "
                    f"{result.ready_s:.1f} s, settled after {result.settled_s:.1f} s "
                    f"({'; '.join(_describe(n, poll.workers[n]) for n in names)})"
                )
                return result
            if time.time() - since > timeout:
                last = "; ".join(_describe(n, poll.workers[n]) for n in names)
                raise BenchError(f"{self.label} {what}: not settled {timeout:.0f} s after the event; last poll: {last}")
            time.sleep(max(0.0, poll.at + self.poll_s - time.time()))

    def watch(self, names: Sequence[str], seconds: float) -> None:
        """Wait ``seconds``, checking that the workers keep running."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_alive(names)
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def procs(self) -> list[subprocess.Popen[bytes]]:
        return [worker.proc for worker in self.workers.values()]

    def logs(self) -> list[Path]:
        return [worker.log_path for worker in self.workers.values()]


def _describe(name: str, health: WorkerHealth | None) -> str:
    if health is None:
        return f"{name}: no answer"
    lags = ",".join(f"{p}:{health.lag.get(p, '?')}" for p in sorted(health.owned))
    return f"{name}: {'ready' if health.ready else 'not ready'}, owns [{lags}] (partition:lag)"


def start_replay(settings: Settings, scale: float, seed: int, speed: float, out: Path) -> subprocess.Popen[bytes]:
    """``livestream replay`` of the fair as single-event records at ``speed`` times real time, as a child process
    (stdout, whose last line is the oracle summary, to ``out``; progress to ``out`` with ``.log``)."""
    command = livestream_command(
        settings, "replay", "--scale", str(scale), "--seed", str(seed), "--batch", "1", "--speed", f"{speed:.3f}"
    )
    with out.open("wb") as stdout, out.with_suffix(".log").open("ab") as stderr:
        return subprocess.Popen(command, stdout=stdout, stderr=stderr)


def measure_takeover(
    settings: Settings,
    standby: int,
    *,
    scale: float = 0.05,
    seed: int = 7,
    warmup_s: float = 30.0,
    replay_s: float = 75.0,
    pause_s: float = 3.0,
    timeout_s: float = 90.0,
    poll_s: float = 0.2,
) -> TakeoverResult:
    """The three takeovers of one standby setting in a fresh namespace (``settings``); see the module docstring."""
    profile = scaled(OCOP_FAIR, scale) if scale != 1.0 else OCOP_FAIR
    oracle = fair_oracle(profile, seed)
    speed = (profile.end_ms - profile.start_ms) / 1000 / replay_s
    asyncio.run(ensure_topics(settings))
    label = f"takeover-standby{standby}"
    group = Group(settings, {"LIVESTREAM_STANDBY_REPLICAS": str(standby), "LIVESTREAM_IDLE_TICK_S": "1"}, label, poll_s)
    out = group.root / f"{label}-replay.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    replay: subprocess.Popen[bytes] | None = None
    times: dict[str, Takeover] = {}
    notes: list[str] = []

    def replay_going(event: str) -> None:
        if replay is not None and replay.poll() is not None:
            notes.append(f"the paced replay had ended before {event}")
            log(f"{label}: the paced replay had already ended before {event} (measured on ticks only)")

    try:
        started = time.time()
        group.start("a")
        group.start("b")
        group.wait_settled(["a", "b"], started, 180, "start (a, b)")
        log(
            f"{label}: replaying the fair at scale {scale} (single-event records) at {speed:.0f}x real time, "
            f"{replay_s:.0f} s; the takeovers start after {warmup_s:.0f} s"
        )
        replay = start_replay(settings, scale, seed, speed, out)
        group.watch(["a", "b"], warmup_s)

        replay_going("kill -9")
        event = time.time()
        group.workers["b"].proc.kill()
        group.workers["b"].proc.wait(10)
        times["kill9"] = group.wait_settled(["a"], event, timeout_s, "kill -9 b")
        group.watch(["a"], pause_s)

        replay_going("join")
        event = time.time()
        group.start("c")
        times["join"] = group.wait_settled(["a", "c"], event, timeout_s, "join c")
        group.watch(["a", "c"], pause_s)

        replay_going("SIGTERM")
        event = time.time()
        leaving = group.workers["a"].proc
        leaving.send_signal(signal.SIGTERM)
        times["sigterm"] = group.wait_settled(["c"], event, timeout_s, "SIGTERM a")
        try:
            code = leaving.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        if code != 0:
            notes.append(f"worker a exited with {code} after SIGTERM")
            log(f"{label}: worker a exited with {code} after SIGTERM (expected 0)")

        try:
            replay.wait(replay_s + 120)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{label}: the paced replay did not finish; log {out.with_suffix('.log')}") from None
        if replay.returncode != 0:
            raise BenchError(f"{label}: replay exited with {replay.returncode}; log {out.with_suffix('.log')}")
        lines = out.read_text().strip().splitlines()
        sent = json.loads(lines[-1]) if lines else {}
        expected = oracle.summary()
        if {k: sent.get(k) for k in expected} != expected:
            raise BenchError(f"{label}: the replay's oracle {sent} differs from the bench's {expected}")
        log(f"{label}: replay done ({sent.get('events', 0):,} events); checking Redis against the oracle")
        wait_redis_exact(settings, profile.campaign, oracle, timeout=120)
        group.check_alive(["c"])
    finally:
        if replay is not None:
            stop_process(replay)
        stop_workers(group.procs())
    problems = report_log_problems(label, group.logs())
    return TakeoverResult(standby, times, int(sent.get("events", 0)), speed, problems, notes)
