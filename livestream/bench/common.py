"""Shared pieces of the benchmark: results, /proc readings, percentiles, child processes, namespaces, cleanup.

A measured consumer reports a :class:`Throughput`: the events it processed between its first and its last
processed record, the wall time between them and the CPU time its process spent in that interval. Events per
second are ``events / seconds`` and CPU seconds per million events ``cpu_s / events * 1e6``; the events already
in hand at the first observation are not counted, so a consumer that was handed a whole batch before its clock
started is not credited with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

if TYPE_CHECKING:
    from stream.settings import Settings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BENCH_ROOT = Path(".cache/bench")


class BenchError(RuntimeError):
    """A measurement that cannot be trusted: a miscount, a missing result, a process that died."""


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Throughput:
    """Events processed in the interval from the first to the last processed record of one worker process."""

    events: int
    seconds: float
    cpu_s: float
    total_events: int
    """Every event the consumer processed (``events`` leaves out those in hand at its first observation)."""

    @property
    def eps(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.inf

    @property
    def cpu_s_per_m(self) -> float:
        return self.cpu_s / self.events * 1e6 if self.events else math.nan


@dataclass(frozen=True)
class ChildResult:
    """What a benchmark child (pass-through, quix, drain) writes to its result file: a throughput and per-partition
    counts (records seen, highest offset seen), which the parent checks against the prefilled offsets."""

    events: int
    seconds: float
    cpu_s: float
    total_events: int
    counts: dict[str, int]
    highest: dict[str, int]

    def throughput(self) -> Throughput:
        return Throughput(self.events, self.seconds, self.cpu_s, self.total_events)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> ChildResult:
        return cls(**json.loads(path.read_text()))


class PartitionTally:
    """Per-partition record counts and highest offsets, for exactness checks and the stop condition."""

    def __init__(self, ends: dict[int, int]) -> None:
        self.ends = ends
        self.counts: dict[int, int] = dict.fromkeys(ends, 0)
        self.highest: dict[int, int] = dict.fromkeys(ends, -1)
        self.open = {p for p, end in ends.items() if end > 0}

    def add(self, partition: int, count: int, highest: int) -> None:
        """``count`` records of ``partition`` below the prefilled end were seen, the last at offset ``highest``."""
        self.counts[partition] += count
        if highest > self.highest[partition]:
            self.highest[partition] = highest
            if highest >= self.ends[partition] - 1:
                self.open.discard(partition)

    @property
    def done(self) -> bool:
        return not self.open

    def as_json(self) -> tuple[dict[str, int], dict[str, int]]:
        return {str(p): c for p, c in self.counts.items()}, {str(p): h for p, h in self.highest.items()}


def check_exact(name: str, result: ChildResult, begins: dict[int, int], ends: dict[int, int]) -> None:
    """Raise :class:`BenchError` unless every prefilled record of every partition was counted exactly once."""
    for partition, end in ends.items():
        want = end - begins.get(partition, 0)
        got = result.counts.get(str(partition), 0)
        highest = result.highest.get(str(partition), -1)
        if got != want or (want and highest != end - 1):
            raise BenchError(
                f"{name}: partition {partition} counted {got} records up to offset {highest}, "
                f"expected {want} up to {end - 1}"
            )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, every thread included (from /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot, from /proc/stat: the machine's load, ours and others'."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid`` in MB (``VmRSS``, or ``VmHWM`` for the peak), from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {field} in /proc/{pid}/status")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def new_namespace(prefix: str = "bench") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_child(module: str, args: list[str], result_path: Path, log_path: Path, timeout: float) -> ChildResult:
    """Run ``python -m <module> <args>`` to completion and read the :class:`ChildResult` it wrote."""
    result_path.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    from livestream.processes import stop_process

    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args, "--result", str(result_path)], stdout=out, stderr=subprocess.STDOUT
        )
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise BenchError(f"{module} did not finish in {timeout:.0f} s; log: {log_path}") from None
        except BaseException:  # interrupted (a stop signal, Ctrl-C): never leave the child running
            stop_process(proc)
            raise
    if code != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise BenchError(f"{module} exited with {code} and no result; log {log_path}:\n{tail}")
    return ChildResult.read(result_path)


async def topic_offsets(kafka: Mapping[str, Any], topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """Beginning and end offsets of every partition of ``topic``."""
    consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        return {tp.partition: begins[tp] for tp in tps}, {tp.partition: ends[tp] for tp in tps}
    finally:
        await consumer.stop()


async def delete_topics(kafka: Mapping[str, Any], namespace: str) -> int:
    """Delete every topic whose name contains ``namespace``; returns how many."""
    admin = AIOKafkaAdminClient(**kafka)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if namespace in t]
        if topics:
            await admin.delete_topics(topics)
        return len(topics)
    finally:
        await admin.close()


def _delete_groups(settings: Settings, namespace: str) -> int:
    """Delete the consumer groups named after ``namespace`` (needs confluent-kafka, a quixstreams dependency)."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return 0
    options = settings.kafka_client_options()
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "security.protocol": settings.kafka_security_protocol,
        "log_level": 3,
    }
    if "sasl_mechanism" in options:
        config.update(
            {
                "sasl.mechanism": options["sasl_mechanism"],
                "sasl.username": options["sasl_plain_username"],
                "sasl.password": options["sasl_plain_password"],
            }
        )
    if settings.kafka_ssl_cafile is not None:
        config["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    admin = AdminClient(config)
    listed = admin.list_consumer_groups(request_timeout=10).result()
    groups = [g.group_id for g in listed.valid if namespace in g.group_id]
    if groups:
        for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
            with contextlib.suppress(Exception):
                future.result()
    return len(groups)


def _remove_state(root: Path) -> None:
    """Remove a namespace's state folders and result files, keeping its ``*.log`` files for inspection."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.suffix != ".log":
            path.unlink(missing_ok=True)


def cleanup_namespace(settings: Settings, namespace: str) -> None:
    """Delete the namespace's topics (every topic whose name contains it), consumer groups, Redis keys and state
    files (logs stay in ``.cache/bench/<namespace>/``). Each part is attempted even if another fails."""
    done: list[str] = []

    def redis_keys() -> int:
        client = redis.Redis.from_url(settings.redis_url)
        keys = list(client.scan_iter(f"{namespace}:*", count=5000))
        for i in range(0, len(keys), 5000):
            client.delete(*keys[i : i + 5000])
        return len(keys)

    parts: list[tuple[str, Callable[[], int]]] = [
        ("topics", lambda: asyncio.run(delete_topics(settings.kafka_client_options(), namespace))),
        ("groups", lambda: _delete_groups(settings, namespace)),
        ("Redis keys", redis_keys),
    ]
    for what, part in parts:
        try:
            done.append(f"{part()} {what}")
        except Exception as exc:
            log(f"could not delete the {what} of {namespace}: {exc!r}")
    _remove_state(BENCH_ROOT / namespace)
    log(f"cleaned {namespace}: {', '.join(done)}")


def json_arg(text: str) -> dict[int, int]:
    """``{"0": 12, ...}`` from the command line -> ``{0: 12, ...}``."""
    return {int(k): int(v) for k, v in json.loads(text).items()}


def elapsed_since(start: float) -> str:
    return f"{time.monotonic() - start:.1f} s"


def to_jsonable(value: Any) -> Any:
    """Round floats for the final JSON line; NaN/inf become null."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 2)
    return value


# Several workers of one consumer group ------------------------------------------------------------------------


@contextlib.contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set inside the block (child processes started in it inherit them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def worker_settings(settings: Settings, name: str) -> Settings:
    """The settings of worker ``name`` of a group: the same namespace, its own state folder and HTTP port."""
    return settings.model_copy(
        update={"data_dir": settings.data_dir.parent / f"worker-{name}", "web_port": free_port()}
    )


def start_worker_env(
    settings: Settings, log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """:func:`livestream.processes.start_worker` with extra ``LIVESTREAM_*`` variables (settings it does not pass on,
    e.g. ``LIVESTREAM_STANDBY_REPLICAS``) in the worker's environment."""
    from livestream.processes import start_worker

    with environ(env or {}):
        return start_worker(settings, log_path)


def stop_workers(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """SIGTERM every worker at once (one after the other would rebalance the group at each exit), wait up to
    ``timeout`` seconds, then SIGKILL those still running."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass(frozen=True)
class WorkerHealth:
    """What one worker's ``/metrics`` says about its partitions (agents/metrics.py, agents/health.py)."""

    ready: bool
    """``livestream_worker_ready``: partitions assigned and recovered, processing alive, nothing stalled."""
    owned: frozenset[int]
    """Events partitions with ``livestream_partition_owned`` 1."""
    lag: Mapping[int, int] = field(default_factory=dict)
    """``livestream_consumer_lag_records`` per owned partition (absent until the partition processed a record)."""
    progress: Mapping[int, float] = field(default_factory=dict)
    """``livestream_partition_last_progress_timestamp_seconds`` per owned partition (epoch seconds)."""
    events_processed: int = 0


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_worker_metrics(text: str) -> WorkerHealth:
    """The partition health series of a worker's Prometheus exposition text."""
    ready = False
    owned: set[int] = set()
    lag: dict[int, int] = {}
    progress: dict[int, float] = {}
    events = 0
    for line in text.splitlines():
        if not line.startswith("livestream_"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, raw = match.groups()
        value = float(raw)
        partition = None
        if labels:
            found = dict(_LABEL.findall(labels))
            if "partition" in found:
                partition = int(found["partition"])
        if name == "livestream_worker_ready":
            ready = value == 1
        elif name == "livestream_events_processed_total":
            events = int(value)
        elif partition is None:
            continue
        elif name == "livestream_partition_owned":
            if value == 1:
                owned.add(partition)
        elif name == "livestream_consumer_lag_records":
            lag[partition] = int(value)
        elif name == "livestream_partition_last_progress_timestamp_seconds":
            progress[partition] = value
    return WorkerHealth(ready, frozenset(owned), lag, progress, events)


def worker_health(port: int, timeout: float = 2.0) -> WorkerHealth | None:
    """The worker's partition health from its ``/metrics``, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
            return parse_worker_metrics(response.read().decode())
    except (OSError, ValueError):
        return None


LOG_PROBLEMS = ("Traceback", "KeyError", "failed", "ERROR", "CRITICAL")

BENIGN_LOG_LINES = (
    "because it is rebalancing",
    "generation id is not  current",
    "local member_id was not recognized",
)
"""Warnings the Kafka client writes while a group rebalances (the member rejoins): expected, not problems."""


def log_problems(
    paths: Iterable[Path], markers: Sequence[str] = LOG_PROBLEMS, benign: Sequence[str] = BENIGN_LOG_LINES
) -> list[str]:
    """Lines of the logs holding one of ``markers`` (case-sensitive) and none of ``benign``, as ``<file>: <line>``."""
    found: list[str] = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if any(marker in line for marker in markers) and not any(ok in line for ok in benign):
                found.append(f"{path.name}: {line.strip()}")
    return found


def report_log_problems(what: str, paths: Iterable[Path]) -> int:
    """Log (stderr) how many problem lines the worker logs hold and the first few distinct ones; the count."""
    found = log_problems(paths)
    if found:
        distinct = list(dict.fromkeys(found))
        log(f"{what}: {len(found)} Traceback/KeyError/failed/ERROR line(s) in worker logs, e.g.:")
        for line in distinct[:8]:
            log(f"    {line[:300]}")
    else:
        log(f"{what}: no Traceback/KeyError/failed/ERROR line in worker logs")
    return len(found)


def livestream_command(settings: Settings, *args: str) -> list[str]:
    """``python -m livestream`` with the settings' Kafka, Redis, namespace, partitions, web port and data dir as
    global flags, then ``args`` (a command and its options)."""
    return [
        sys.executable,
        "-m",
        "livestream",
        "--kafka",
        settings.kafka_bootstrap,
        "--redis-url",
        settings.redis_url,
        "--namespace",
        settings.namespace,
        "--partitions",
        str(settings.partitions),
        "--web-port",
        str(settings.web_port),
        "--data-dir",
        str(settings.data_dir),
        *args,
    ]
