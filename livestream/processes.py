"""The processes of the demo and the bench: starting a worker or a gateway and waiting until it answers, stopping
children (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`), handing stop signals on to them, waiting until a
consumer group caught up, reading a worker's ``/metrics``, and removing earlier demos' topics and keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Iterator, Mapping
from multiprocessing import resource_tracker
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

import redis
from aiokafka.admin import AIOKafkaAdminClient

from livestream import readback
from livestream.lag import consumer_lag
from stream.replay.profile import OCOP_FAIR
from stream.settings import Settings

T = TypeVar("T")


class Polled(Protocol):
    """A worker process as the waits below see it (``subprocess.Popen`` or :class:`SupervisedWorker`)."""

    returncode: int | None

    def poll(self) -> int | None: ...


STOP_GRACE_S = 10.0
"""Seconds a child process has to exit after SIGTERM before it is killed."""
EXIT_DEADLINE_S = 5.0
"""After a stop signal and its children are gone, seconds the demo has to unwind (``finally`` blocks, the
terminal's cursor) before it exits regardless: a thread blocked for good (e.g. reading from a replay generator
that was just stopped) must not keep the process alive."""


def log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def child_pids() -> list[int]:
    """Live (not yet exited) child processes of this process, whoever started them (Linux ``/proc``), except
    multiprocessing's resource tracker (it ignores SIGTERM and exits by itself once this process has exited)."""
    me, found = os.getpid(), []
    tracker = getattr(getattr(resource_tracker, "_resource_tracker", None), "_pid", None)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": comm may hold anything
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me and fields[0] not in (b"Z", b"X") and int(entry.name) != tracker:
            found.append(int(entry.name))
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_children(grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM every child process, give them ``grace_s`` seconds to exit, SIGKILL those still running and wait
    until they are gone. Children are not reaped (their ``Popen`` objects still get their exit status); an exited
    child holds no port or file. Returns the pids that had to be killed."""
    pids = child_pids()
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [pid for pid in child_pids() if pid in pids]
    killed = pids
    _signal_all(killed, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        time.sleep(0.02)
        pids = [pid for pid in child_pids() if pid in pids]
    return killed


@contextlib.contextmanager
def children_stopped_on_signals(
    grace_s: float = STOP_GRACE_S, name: str = "demo", exit_deadline_s: float = EXIT_DEADLINE_S
) -> Iterator[None]:
    """While in the block, SIGTERM and SIGINT stop every child process (:func:`stop_children`), then exit the
    command with ``128 + signal`` (143, 130) by raising :class:`SystemExit`, so ``finally`` blocks still run; if
    they have not finished ``exit_deadline_s`` seconds later the process exits anyway. Another signal while
    stopping kills the remaining children at once, unless it comes within a second of the first (``timeout``, a
    terminal's Ctrl-C and the parent command may all signal the same processes at once). The previous handlers are
    restored on leaving the block."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
        yield
        return
    stopping_since: float | None = None

    def say(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    def exit_anyway(code: int) -> None:
        say(f"still running {exit_deadline_s:.0f} s after its child processes stopped; exiting now")
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(code)

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping_since
        code = 128 + signum
        if stopping_since is not None:
            if time.monotonic() - stopping_since < 1:
                return  # the same stop, delivered by several senders: keep stopping gracefully
            _signal_all(child_pids(), signal.SIGKILL)
            raise SystemExit(code)
        stopping_since = time.monotonic()
        # SystemExit is raised wherever the main thread is, possibly inside an asyncio task: asyncio would then log
        # it as a task exception nobody retrieved, a traceback that says nothing about the stop.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        say(f"{signal.Signals(signum).name} received: stopping child processes, then exiting with {code}")
        killed = stop_children(grace_s)
        if killed:
            say(f"killed child processes {killed}: still running {grace_s:.0f} s after SIGTERM")
        watchdog = threading.Timer(exit_deadline_s, exit_anyway, (code,))
        watchdog.daemon = True
        watchdog.start()
        raise SystemExit(code)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM ``proc``, wait up to ``grace_s`` seconds, then SIGKILL it; returns once it has exited."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


class WorkerExitedError(RuntimeError):
    """The supervised worker exited for good."""


class SupervisedWorker:
    """A worker child process, watched as a supervisor (compose, Kubernetes) would: one that fenced itself after a
    stop (exit :data:`agents.freeze.EXIT_FROZEN`, "restart me") is started again, at most ``max_restarts`` times;
    any other exit is final. :meth:`poll` answers as ``Popen.poll`` (None while a worker runs)."""

    def __init__(self, settings: Settings, log_path: Path, max_restarts: int = 3) -> None:
        self.settings = settings
        self.log_path = log_path
        self.max_restarts = max_restarts
        self.restarts = 0
        self.process = start_worker(settings, log_path)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        from agents.freeze import EXIT_FROZEN

        code = self.process.poll()
        if code is None:
            return None
        if code == EXIT_FROZEN and self.restarts < self.max_restarts:
            self.restarts += 1
            log(f"the worker exited {code} (it fenced itself after a stop); starting it again ({self.restarts})")
            self.process = start_worker(self.settings, self.log_path)
            return None
        self.returncode = code
        return code

    def check(self) -> None:
        """Raise :class:`WorkerExitedError` if the worker is gone for good."""
        code = self.poll()
        if code is not None:
            raise WorkerExitedError(f"the worker exited with status {code}; see {self.log_path}")

    async def watch(self, interval_s: float = 0.2) -> None:
        """Return (raise) as soon as the worker is gone for good."""
        while True:
            self.check()
            await asyncio.sleep(interval_s)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        stop_process(self.process, grace_s)


async def until_worker_exits(work: Awaitable[T], worker: SupervisedWorker) -> T:
    """Run ``work`` (a replay); if the worker exits for good meanwhile, stop it at once and raise
    :class:`WorkerExitedError` (producing into a dead worker helps nobody)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(worker.watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        watcher.result()  # raises WorkerExitedError
        raise AssertionError("unreachable")
    finally:
        watcher.cancel()


async def _delete_topics(kafka: Mapping[str, Any], prefix_pattern: re.Pattern[str], keep: str) -> list[str]:
    admin = AIOKafkaAdminClient(**kafka)
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
        topics = asyncio.run(_delete_topics(settings.kafka_client_options(), pattern, settings.namespace))
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


def wait_http(url: str, timeout: float, worker: Polled) -> None:
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
    settings: Settings, campaign: str, expected: dict[str, int], timeout: float, worker: Polled
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
            lag = asyncio.run(consumer_lag(settings.kafka_client_options(), settings.app_id, settings.events_topic))
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


def start_gateway(settings: Settings, token: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``livestream gateway`` for ``settings`` with one source (``token``, every campaign of the fair);
    returns the process and its URL once it is ready."""
    from stream.ingest import hash_token

    port = settings.gateway_port if not port_in_use(settings.gateway_port) else _free_port()
    campaigns = json.dumps([OCOP_FAIR.campaign])
    env = dict(os.environ)
    env.update(
        LIVESTREAM_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        LIVESTREAM_NAMESPACE=settings.namespace,
        LIVESTREAM_PARTITIONS=str(settings.partitions),
        LIVESTREAM_GATEWAY_PORT=str(port),
        LIVESTREAM_GATEWAY_TOKENS=f'sources.demo = {{token_sha256 = "{hash_token(token)}", campaigns = {campaigns}}}',
    )
    env.pop("LIVESTREAM_GATEWAY_TOKENS_FILE", None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "livestream", "gateway"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/readyz", 60, proc)
    return proc, url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
