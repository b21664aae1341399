"""``livestream bench``: every figure of the benchmark in one run, on the local real Kafka and Redis.

Order of the steps (each consumer is its own child process and runs alone, so it has the machine to itself,
apart from Kafka, Redis and whatever else runs on it):

1. fill ``<ns>.events`` with the fair (``--scale``) as single-event records, and ``<ns2>.events`` with the fair
   (``--batch-scale``) as batch envelopes of ``--batch`` events; the producer is never in a measurement;
2. on the single-event topic: the raw aiokafka drain, the faust pass-through counter (both ways of iterating;
   the ceiling is the faster), quixstreams' windowed count, then our pipeline; then our pipeline on the batch
   topic. Every count must be exact (consumers: every prefilled record once; pipeline: every livestream's
   counters in Redis equal the replay oracle);
3. latency event -> Redis at ``--latency-load`` (0.5) times the pipeline's single-event rate;
4. worker RSS with 1k, 10k and 100k active livestreams, each in a fresh namespace;
5. the full fair, ``livestream demo --once`` (batch envelopes), its wall time with exact totals;
6. scaling: 1, 2 and 3 workers in one consumer group, each count on a fresh 12-partition namespace filled like the
   single-event topic (``livestream.bench.scaling``);
7. takeover: kill -9, join and SIGTERM under a paced live replay, with 0 and 1 standby replicas
   (``livestream.bench.takeover``);
8. gateway: the fair through one ``livestream gateway`` process from 8 concurrent clients, until the worker's
   totals equal the oracle, then request latency at half that rate (``livestream.bench.gateway``).

Each step uses fresh namespaces (``bench<hex>``) whose topics, groups, Redis keys and files are removed after it.
A step that fails (miscount, timeout, crash) is reported on stderr, its figures are null, and the command exits 1.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from livestream.bench.common import (
    BENCH_ROOT,
    BenchError,
    ChildResult,
    Throughput,
    check_exact,
    cleanup_namespace,
    free_port,
    log,
    machine_cpu,
    new_namespace,
    run_child,
    topic_offsets,
)
from livestream.bench.report import final_line, table, targets
from livestream.producer import ReplayResult, replay_fair
from stream.replay.profile import OCOP_FAIR
from stream.settings import Settings

STEPS: Final = (
    "drain",
    "passthrough",
    "quix",
    "single",
    "crc32",
    "batch",
    "latency",
    "memory",
    "fair",
    "scaling",
    "takeover",
    "gateway",
)


@dataclass(frozen=True)
class BenchOptions:
    scale: float = 0.1
    """Scale of the fair for the single-event topic (0.1 = about 373k events)."""
    batch_scale: float = 0.5
    """Scale of the fair for the batch-envelope topic."""
    batch: int = 500
    seed: int = 7
    skip: frozenset[str] = frozenset()
    latency_load: float = 0.5
    """Latency is measured at this fraction of the pipeline's single-event rate."""
    latency_rate: float | None = None
    """Fixed latency rate (events/s); overrides ``latency_load``, needed when the single-event step is skipped."""
    latency_seconds: float = 20.0
    memory_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    fair_scale: float = 1.0
    partitions: int = 4
    scaling_partitions: int = 12
    """Partitions of the scaling step's topics (the default of a deployment, so up to 12 workers can share them)."""
    scaling_workers: tuple[int, ...] = (1, 2, 3)
    takeover_scale: float = 0.05
    """Scale of the fair the takeover step replays live (single-event records)."""
    takeover_partitions: int = 4
    takeover_standbys: tuple[int, ...] = (0, 1)
    takeover_warmup_s: float = 30.0
    """Seconds of live replay before the first takeover (state and changelogs build up)."""
    takeover_replay_s: float = 75.0
    """The paced replay lasts this long (it goes on during the three takeovers)."""
    gateway_scale: float = 0.3
    """Scale of the fair sent through the ingestion gateway (about 1M events)."""
    gateway_connections: int = 8
    gateway_latency_seconds: float = 15.0
    keep: bool = False
    """Keep topics, Redis keys and files of every namespace (for inspection)."""
    base: dict[str, Any] = field(default_factory=dict)
    """Settings overrides (bootstrap, Redis URL) from the global flags."""


class Bench:
    def __init__(self, options: BenchOptions) -> None:
        self.options = options
        self.figures: dict[str, float | int | None] = {}
        self.errors: dict[str, str] = {}
        self.base = Settings(**options.base)

    def settings(self, namespace: str, partitions: int | None = None) -> Settings:
        return Settings(
            **{
                **self.options.base,
                "namespace": namespace,
                "partitions": partitions or self.options.partitions,
                "data_dir": BENCH_ROOT / namespace / "worker",
                "web_port": free_port(),
            }
        )

    def cleanup(self, namespace: str) -> None:
        if not self.options.keep:
            cleanup_namespace(self.base, namespace)

    def step(self, name: str, run: Callable[[], None]) -> None:
        if name in self.options.skip:
            return
        started = time.monotonic()
        busy0, total0 = machine_cpu()
        log(f"step {name}")
        try:
            run()
        except Exception as exc:  # any failure of a step is reported and fails the run, after the other steps
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"FAILED {name}: {type(exc).__name__}: {exc}")
        else:
            busy1, total1 = machine_cpu()
            busy = 100 * (busy1 - busy0) / max(1, total1 - total0)
            self.figures[f"machine_busy_pct_{name}"] = busy
            log(f"step {name} done in {time.monotonic() - started:.1f} s; machine CPU busy {busy:.0f}% (every process)")

    def put(self, key: str, result: Throughput) -> None:
        self.figures[f"{key}_eps"] = result.eps
        self.figures[f"{key}_cpu_s_per_m"] = result.cpu_s_per_m
        self.figures[f"{key}_events"] = result.total_events
        log(f"{key}: {result.eps:,.0f} events/s, {result.cpu_s_per_m:.2f} CPU s per million events")

    # Steps ---------------------------------------------------------------------------------------------------
    def fill(
        self, namespace: str, scale: float, batch: int, partitions: int | None = None, partitioner: str = "murmur2"
    ) -> tuple[ReplayResult, dict[int, int], dict[int, int]]:
        settings = self.settings(namespace, partitions)
        log(f"filling {settings.events_topic}: fair at scale {scale}, {batch} event(s) per record, {partitioner}")
        result = asyncio.run(
            replay_fair(settings, scale=scale, seed=self.options.seed, batch=batch, partitioner=partitioner)
        )
        begins, ends = asyncio.run(topic_offsets(settings.kafka_client_options(), settings.events_topic))
        if sum(ends.values()) - sum(begins.values()) != result.records:
            raise BenchError(f"{settings.events_topic} holds {sum(ends.values())} records, {result.records} were sent")
        log(f"filled with {result.events:,} events in {result.records:,} records in {result.seconds:.1f} s")
        return result, begins, ends

    def consumer(
        self, name: str, module: str, args: list[str], root: Path, begins: dict[int, int], ends: dict[int, int]
    ) -> ChildResult:
        """Run a consumer child to completion; its per-partition counts must match the prefilled offsets."""
        result = run_child(
            module,
            [*args, "--ends", json.dumps(ends)],
            root / f"{name}.json",
            root / f"{name}.log",
            timeout=900,
        )
        check_exact(name, result, begins, ends)
        return result

    def run_single_topic(self) -> None:
        """Drain, pass-through, quix and the pipeline on one single-event topic."""
        wanted = {"drain", "passthrough", "quix", "single"} - self.options.skip
        if not wanted:
            return
        namespace = new_namespace()
        try:
            replay, begins, ends = self.fill(namespace, self.options.scale, 1)
            settings = self.settings(namespace)
            topic, bootstrap = settings.events_topic, settings.kafka_bootstrap
            root = BENCH_ROOT / namespace

            def drain() -> None:
                result = self.consumer(
                    "drain", "livestream.bench.drain", ["--bootstrap", bootstrap, "--topic", topic], root, begins, ends
                )
                self.put("aiokafka_drain", result.throughput())

            def passthrough() -> None:
                best: Throughput | None = None
                for mode in ("take", "iter"):
                    result = self.consumer(
                        f"passthrough-{mode}",
                        "livestream.bench.passthrough",
                        [
                            "--namespace",
                            f"{namespace}-pt{mode}",
                            "--topic",
                            topic,
                            "--mode",
                            mode,
                            "--data-dir",
                            str(root / f"pt-{mode}"),
                        ],
                        root,
                        begins,
                        ends,
                    )
                    throughput = result.throughput()
                    self.figures[f"faust_passthrough_{mode}_eps"] = throughput.eps
                    log(f"faust pass-through ({mode}): {throughput.eps:,.0f} events/s")
                    if best is None or throughput.eps > best.eps:
                        best = throughput
                assert best is not None
                self.put("faust_passthrough", best)

            def quix() -> None:
                result = self.consumer(
                    "quix",
                    "livestream.bench.quix",
                    [
                        "--bootstrap",
                        bootstrap,
                        "--group",
                        f"{namespace}-quix",
                        "--topic",
                        topic,
                        "--state-dir",
                        str(root / "quix-state"),
                    ],
                    root,
                    begins,
                    ends,
                )
                self.put("quix_window", result.throughput())

            def single() -> None:
                from livestream.bench.pipeline import measure_pipeline

                result = measure_pipeline(settings, replay.oracle, OCOP_FAIR.campaign, replay.events, "single")
                self.put("pipeline_single", result)

            self.step("drain", drain)
            self.step("passthrough", passthrough)
            self.step("quix", quix)
            self.step("single", single)
        finally:
            self.cleanup(namespace)

    def run_pipeline_topic(self, step: str, scale: float, batch: int, partitioner: str = "murmur2") -> None:
        """Our pipeline alone on a topic of its own, filled with the fair at ``scale`` (``batch`` events per record,
        placed by ``partitioner``); figures under ``pipeline_<step>``."""
        if step in self.options.skip:
            return
        namespace = new_namespace()
        try:

            def measure() -> None:
                from livestream.bench.pipeline import measure_pipeline

                replay, _, _ = self.fill(namespace, scale, batch, partitioner=partitioner)
                settings = self.settings(namespace)
                result = measure_pipeline(settings, replay.oracle, OCOP_FAIR.campaign, replay.events, step)
                self.put(f"pipeline_{step}", result)

            self.step(step, measure)
        finally:
            self.cleanup(namespace)

    def run_latency(self) -> None:
        def latency() -> None:
            from livestream.bench.latency import measure_latency

            rate = self.options.latency_rate
            if rate is None:
                single = self.figures.get("pipeline_single_eps")
                if not single:
                    raise BenchError("no pipeline single-event rate measured: pass --latency-rate")
                rate = self.options.latency_load * float(single)
            namespace = new_namespace()
            try:
                result = measure_latency(self.settings(namespace), rate, self.options.latency_seconds)
            finally:
                self.cleanup(namespace)
            self.figures.update(
                latency_p50_ms=result.p50_ms,
                latency_p99_ms=result.p99_ms,
                latency_max_ms=result.max_ms,
                latency_rate_eps=result.rate,
                latency_achieved_eps=result.achieved_rate,
                latency_samples=result.samples,
            )
            log(
                f"latency at {result.rate:,.0f}/s (achieved {result.achieved_rate:,.0f}/s): "
                f"p50 {result.p50_ms:.0f} ms, "
                f"p99 {result.p99_ms:.0f} ms over {result.samples:,} views; p99 by second sent: "
                f"{' '.join(f'{x:.0f}' for x in result.p99_by_second)}"
            )

        self.step("latency", latency)

    def run_memory(self) -> None:
        def memory() -> None:
            from livestream.bench.memory import measure_memory

            for n in self.options.memory_sizes:
                namespace = new_namespace()
                try:
                    result = measure_memory(self.settings(namespace), n)
                finally:
                    self.cleanup(namespace)
                label = f"{n // 1000}k" if n % 1000 == 0 else str(n)
                self.figures[f"rss_mb_{label}"] = result.rss_mb
                self.figures[f"rss_peak_mb_{label}"] = result.peak_mb
                self.figures[f"rss_idle_mb_{label}"] = result.idle_mb
                log(f"RSS with {n:,} livestreams: {result.rss_mb:.0f} MB (peak {result.peak_mb:.0f} MB)")

        self.step("memory", memory)

    def run_fair(self) -> None:
        def fair() -> None:
            from livestream.bench.fair import measure_fair

            namespace = new_namespace()
            try:
                settings = self.settings(namespace)
                result = measure_fair(
                    settings, self.options.fair_scale, self.options.batch, BENCH_ROOT / namespace / "demo.log"
                )
            finally:
                self.cleanup(namespace)
            self.figures.update(
                fair_replay_seconds=result.seconds,
                fair_events=result.events,
                fair_produce_seconds=result.produce_seconds,
            )
            log(f"fair: {result.events:,} events, exact totals, {result.seconds:.1f} s wall")

        self.step("fair", fair)

    def run_scaling(self) -> None:
        def scaling() -> None:
            from livestream.bench.scaling import measure_scaling

            partitions = self.options.scaling_partitions
            for workers in self.options.scaling_workers:
                namespace = new_namespace()
                try:
                    replay, _, _ = self.fill(namespace, self.options.scale, 1, partitions)
                    settings = self.settings(namespace, partitions)
                    result = measure_scaling(settings, workers, replay.oracle, OCOP_FAIR.campaign, replay.events)
                finally:
                    self.cleanup(namespace)
                self.figures[f"scaling_eps_{workers}w"] = result.whole.eps
                if workers > 1:
                    self.figures[f"scaling_eps_per_worker_{workers}w"] = result.eps_per_worker
                self.figures[f"scaling_steady_eps_{workers}w"] = result.steady.eps if result.steady else None
                self.figures[f"scaling_cpu_s_per_m_{workers}w"] = result.whole.cpu_s_per_m
                self.figures[f"scaling_settle_s_{workers}w"] = result.settle_s
                self.figures[f"scaling_log_problems_{workers}w"] = result.log_problems
                self.figures["scaling_events"] = result.whole.total_events
                log(
                    f"scaling {workers} worker(s): {result.whole.eps:,.0f} events/s "
                    f"({result.eps_per_worker:,.0f} per worker), steady "
                    f"{result.steady.eps if result.steady else math.nan:,.0f}/s, events per worker "
                    f"{list(result.per_worker)}"
                )

        self.step("scaling", scaling)

    def run_takeover(self) -> None:
        def takeover() -> None:
            from livestream.bench.takeover import EVENTS, measure_takeover

            for standby in self.options.takeover_standbys:
                namespace = new_namespace()
                try:
                    result = measure_takeover(
                        self.settings(namespace, self.options.takeover_partitions),
                        standby,
                        scale=self.options.takeover_scale,
                        seed=self.options.seed,
                        warmup_s=self.options.takeover_warmup_s,
                        replay_s=self.options.takeover_replay_s,
                    )
                finally:
                    self.cleanup(namespace)
                for event in EVENTS:
                    self.figures[f"takeover_{event}_s_standby{standby}"] = result.times[event].settled_s
                for event in EVENTS:
                    self.figures[f"takeover_{event}_owned_s_standby{standby}"] = result.times[event].owned_s
                    self.figures[f"takeover_{event}_ready_s_standby{standby}"] = result.times[event].ready_s
                self.figures[f"takeover_log_problems_standby{standby}"] = result.log_problems
                log(
                    f"takeover with {standby} standby replica(s): "
                    + ", ".join(
                        f"{event} {result.times[event].settled_s or math.nan:.1f} s "
                        f"(all owned after {result.times[event].owned_s or math.nan:.1f} s)"
                        for event in EVENTS
                    )
                    + f"; {result.events:,} events exact"
                )

        self.step("takeover", takeover)

    def run_gateway(self) -> None:
        def gateway() -> None:
            from livestream.bench.gateway import measure_gateway

            namespace, latency_namespace = new_namespace(), new_namespace()
            try:
                result = measure_gateway(
                    self.settings(namespace),
                    self.settings(latency_namespace),
                    self.options.gateway_scale,
                    self.options.seed,
                    batch=self.options.batch,
                    connections=self.options.gateway_connections,
                    latency_seconds=self.options.gateway_latency_seconds,
                )
            finally:
                self.cleanup(namespace)
                self.cleanup(latency_namespace)
            self.figures.update(
                gateway_eps=result.eps,
                gateway_p99_ms=result.p99_ms,
                gateway_p50_ms=result.p50_ms,
                gateway_events=result.events,
                gateway_cpu_s_per_m=result.gateway_cpu_s_per_m,
                gateway_latency_rate_eps=result.rate,
                gateway_latency_achieved_eps=result.achieved_rate,
                gateway_latency_samples=result.samples,
                gateway_retries=result.retries,
            )
            log(
                f"gateway: {result.eps:,.0f} events/s ({result.events:,} events, exact), gateway CPU "
                f"{result.gateway_cpu_s_per_m:.2f} s per million events; requests at {result.rate:,.0f} events/s: "
                f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms over {result.samples} requests"
            )

        self.step("gateway", gateway)

    def run(self) -> int:
        """Every step not skipped; prints the table and the JSON line to stdout; 1 if a step failed."""
        from livestream import services

        services.up()
        started = time.monotonic()
        self.run_single_topic()
        # Single events placed by CRC32 (librdkafka's default): most are forwarded to their home partition first.
        self.run_pipeline_topic("crc32", self.options.scale, 1, partitioner="crc32")
        self.run_pipeline_topic("batch", self.options.batch_scale, self.options.batch)
        self.run_latency()
        self.run_memory()
        self.run_fair()
        self.run_scaling()
        self.run_takeover()
        self.run_gateway()
        self.figures["bench_seconds"] = time.monotonic() - started
        print(table(self.figures), flush=True)
        print(final_line(self.figures), flush=True)
        if self.errors:
            for name, error in self.errors.items():
                log(f"FAILED {name}: {error}")
            return 1
        return 0


def run_bench(options: BenchOptions, strict: bool = False) -> int:
    """Run the benchmark; exit code 1 if a step failed, 2 if ``strict`` and a measured target was missed.

    SIGTERM or SIGINT stops every child process (consumers, workers, the fair's ``livestream demo``, which stops
    its own worker first), then exits with 143 or 130 after the current step's namespaces are cleaned up."""
    from livestream.processes import STOP_GRACE_S, children_stopped_on_signals

    bench = Bench(options)
    # The fair step's child is a demo that gives its own worker STOP_GRACE_S: give it a little more. Cleaning up
    # the step's namespaces (topics, groups, Redis keys) after a stop signal may take a while.
    with children_stopped_on_signals(grace_s=STOP_GRACE_S + 5, name="bench", exit_deadline_s=120):
        code = bench.run()
    if code == 0 and strict and any(t.met is False for t in targets(bench.figures)):
        return 2
    return code
