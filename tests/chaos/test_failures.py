"""Failure tests on real Kafka and Redis: every one ends with every counter and every final window exact.

A seeded fair is replayed at a fixed pace in a background thread while the failure is injected; afterwards the
Redis totals, each livestream's counters, the table's changelog and the final window records (1- and 5-minute)
are compared with the oracle, and no final window may appear twice in its topic.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from livestream.lag import partition_lag
from livestream.producer import ReplayResult
from livestream.services import LOCAL
from schemas.alerts import AlertRecord
from schemas.stats import WindowStats
from stream.fold import TICK_HEADER
from stream.replay.generator import FairReplay
from stream.replay.incidents import ScriptedReplay
from stream.replay.oracle import COUNTER_FIELDS, Oracle
from stream.replay.profile import OCOP_FAIR, scaled
from tests.alert_scenario import simulate
from tests.support import Pipeline, check_campaign_windows, wait_until

CAMPAIGN = "ocop-bac-giang-2023"
SCALE = 0.01
FAIR_MINUTES = 285
PACE_SECONDS = 24.0  # the whole fair is replayed over this many seconds
# Idle timeout short enough to close the last windows soon (the broker outage test stays away longer than it).
FAST_IDLE = {"LIVESTREAM_IDLE_TIMEOUT_S": "15", "LIVESTREAM_IDLE_TICK_S": "1"}


class BackgroundReplay:
    def __init__(self, pipeline: Pipeline, seed: int, batch: int) -> None:
        self.result: ReplayResult | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = pipeline.replay(
                    scale=SCALE, seed=seed, batch=batch, speed=FAIR_MINUTES * 60 / PACE_SECONDS
                )
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.started = time.monotonic()
        self.thread.start()

    def join(self) -> ReplayResult:
        self.thread.join(180)
        if self.error is not None:
            raise self.error
        assert self.result is not None, "replay did not finish"
        return self.result

    def at(self, fraction: float) -> None:
        """Sleep until ``fraction`` of the replay's pace has passed."""
        time.sleep(max(0.0, self.started + fraction * PACE_SECONDS - time.monotonic()))


def assert_exact(pipeline: Pipeline, oracle: Oracle, seed: int, scale: float = SCALE) -> None:
    pipeline.wait_redis_summary(CAMPAIGN, oracle.summary(), timeout=240)
    channels = pipeline.redis_channels(CAMPAIGN)
    for channel_id, expected in oracle.channels.items():
        for name in COUNTER_FIELDS:
            assert channels[channel_id][name] == getattr(expected, name), (channel_id, name)
        assert channels[channel_id]["peak_concurrent_viewers"] == expected.peak_concurrent

    # The changelog follows the state (the producer sends it after the batch; Redis can be written first).
    expected_totals = {cid: {n: getattr(c, n) for n in COUNTER_FIELDS} for cid, c in oracle.channels.items()}

    def changelog_exact() -> bool:
        states = pipeline.table_states()
        return all(cid in states and states[cid].totals.as_dict() == want for cid, want in expected_totals.items())

    wait_until(changelog_exact, 60, "every livestream's state in the changelog equal to the oracle", interval=1.0)

    # Every window closes (idle ticks close the last ones); each final record once, equal to the oracle.
    def windows(topic: str) -> list[WindowStats]:
        return [msgspec.json.decode(r.value, type=WindowStats) for r in pipeline.read_topic(topic) if r.value]

    settings = pipeline.settings()
    wait_until(lambda: len(windows(settings.stats_1m_topic)) >= len(oracle.windows), 120, "every 1-minute window")
    minute = windows(settings.stats_1m_topic)
    keys = [(w.channel_id, w.window_start_ms) for w in minute]
    assert len(keys) == len(set(keys)), "a final 1-minute window was emitted twice"
    assert set(keys) == set(oracle.windows)
    for w in minute:
        expected_window = oracle.windows[(w.channel_id, w.window_start_ms)]
        assert {n: getattr(w, n) for n in COUNTER_FIELDS} == {n: getattr(expected_window, n) for n in COUNTER_FIELDS}

    expected_hop: dict[tuple[str, int], int] = {}
    for (channel_id, start), w in oracle.windows.items():
        for hop_start in range(start - 240_000, start + 60_000, 60_000):
            expected_hop[(channel_id, hop_start)] = expected_hop.get((channel_id, hop_start), 0) + w.views
    wait_until(lambda: len(windows(settings.stats_hop_topic)) >= len(expected_hop), 60, "every 5-minute window")
    hop = windows(settings.stats_hop_topic)
    hop_keys = [(w.channel_id, w.window_start_ms) for w in hop]
    assert len(hop_keys) == len(set(hop_keys)), "a final 5-minute window was emitted twice"
    assert {(w.channel_id, w.window_start_ms): w.views for w in hop} == expected_hop

    # Campaign windows: each minute once, the sum of its livestreams' windows.
    check_campaign_windows(pipeline, oracle, complete=True)

    # Alerts: exactly what the pure core gives for these events, each transition once.
    expected_alerts = sorted(
        (c.alert_id, c.status) for c in simulate(ScriptedReplay.of(FairReplay(scaled(OCOP_FAIR, scale), seed)))
    )
    alerts = [msgspec.json.decode(r.value or b"", type=AlertRecord) for r in pipeline.read_topic(settings.alerts_topic)]
    assert sorted((a.alert_id, a.status) for a in alerts) == expected_alerts


def run_scenario(
    pipeline: Pipeline, inject: Callable[[Pipeline, BackgroundReplay], None], seed: int = 21, batch: int = 1
) -> float:
    """Replay while ``inject`` runs; returns seconds from the end of the replay until everything was exact."""
    pipeline.extra_env.update(FAST_IDLE)
    pipeline.start_worker()
    replay = BackgroundReplay(pipeline, seed=seed, batch=batch)
    inject(pipeline, replay)
    result = replay.join()
    done = time.monotonic()
    assert_exact(pipeline, result.oracle, seed)
    return time.monotonic() - done


def restart_worker(pipeline: Pipeline, sig: int) -> float:
    """Stop the running worker with ``sig`` and start a new one; returns seconds until the new one answers."""
    pipeline.stop_worker(pipeline.workers[-1], sig)
    started = time.monotonic()
    pipeline.start_worker(index=len(pipeline.workers))
    return time.monotonic() - started


BATCHES = pytest.mark.parametrize("batch", [1, 100], ids=["single-events", "envelopes"])


@pytest.mark.slow
@BATCHES
def test_kill_9_three_times_during_the_replay(pipeline: Pipeline, batch: int) -> None:
    restarts: list[float] = []

    def inject(pipe: Pipeline, replay: BackgroundReplay) -> None:
        for fraction in (0.2, 0.45, 0.7):
            replay.at(fraction)
            restarts.append(restart_worker(pipe, signal.SIGKILL))

    settle = run_scenario(pipeline, inject, batch=batch)
    print(f"kill -9 x3: restarts {[round(r, 1) for r in restarts]} s, exact {settle:.1f} s after the replay")


def committed_records(pipeline: Pipeline) -> int:
    """Sum of the group's committed offsets on the events topic."""
    s = pipeline.settings()
    lags = asyncio.run(partition_lag(s.kafka_client_options(), s.app_id, s.events_topic))
    return sum(max(0, committed) for _, committed, _ in lags.values())


def set_produce_quota(client_id: str, bytes_per_s: int | None) -> None:
    """A client quota on the local broker (``kafka-configs``' ConfigCommand from the broker's own jars)."""
    change = (
        ["--add-config", f"producer_byte_rate={bytes_per_s}"]
        if bytes_per_s
        else ["--delete-config", "producer_byte_rate"]
    )
    cache = Path(os.environ.get("LIVESTREAM_CACHE_DIR") or LOCAL.parents[1] / ".cache")
    jars = str(cache / "kafka" / "libs" / "*")
    command = ["java", "-cp", jars, "kafka.admin.ConfigCommand", "--bootstrap-server", "127.0.0.1:9092", "--alter"]
    command += [*change, "--entity-type", "clients", "--entity-name", client_id]
    done = subprocess.run(command, check=False, timeout=120, capture_output=True, text=True)
    if bytes_per_s and done.returncode != 0:  # deleting a quota that is not there fails, and is fine
        raise AssertionError(f"could not set the quota: {done.stdout}{done.stderr}")


@pytest.mark.slow
@BATCHES
def test_kill_9_right_after_a_commit_with_the_producer_throttled(pipeline: Pipeline, batch: int) -> None:
    """The broker throttles the worker's producer (a client quota), so its changelog rows trail its processing; a
    kill -9 right after the group's committed offsets moved loses nothing: offsets are committed only after every
    record they produced was acknowledged. Restored exactly, every final window once."""
    client_id = pipeline.settings().app_id
    pipeline.extra_env["LIVESTREAM_PRODUCER_BATCH_BYTES"] = "16384"  # small batches: the quota backs records up

    def inject(pipe: Pipeline, replay: BackgroundReplay) -> None:
        set_produce_quota(client_id, 20_000)
        replay.at(0.4)
        before = committed_records(pipe)
        wait_until(lambda: committed_records(pipe) > before, 60, "a commit under the quota", interval=0.05)
        pipe.stop_worker(pipe.workers[-1], signal.SIGKILL)
        set_produce_quota(client_id, None)
        pipe.start_worker(index=len(pipe.workers))

    try:
        run_scenario(pipeline, inject, batch=batch)
    finally:
        set_produce_quota(client_id, None)


@pytest.mark.slow
@BATCHES
def test_sigterm_mid_window(pipeline: Pipeline, batch: int) -> None:
    def inject(pipe: Pipeline, replay: BackgroundReplay) -> None:
        replay.at(0.5)
        restart_worker(pipe, signal.SIGTERM)

    run_scenario(pipeline, inject, batch=batch)


@pytest.mark.slow
@BATCHES
def test_state_directory_deleted_is_rebuilt_from_the_changelog(pipeline: Pipeline, batch: int) -> None:
    def inject(pipe: Pipeline, replay: BackgroundReplay) -> None:
        replay.at(0.5)
        pipe.stop_worker(pipe.workers[-1], signal.SIGKILL)
        data_dir = pipe.root / f"worker-{len(pipe.workers) - 1}"
        shutil.rmtree(data_dir)
        pipe.start_worker(index=len(pipe.workers) - 1)  # same data dir, now empty

    run_scenario(pipeline, inject, batch=batch)


@pytest.mark.slow
def test_records_skipped_past_are_read_again_in_runs_of_the_batch_bounds(pipeline: Pipeline) -> None:
    """The group's offsets are moved half-way into every partition before the first worker starts (as a seek past
    records, or a fetch the client dropped, would): the fold finds the jump against its cursor, streams the
    skipped records from Kafka in runs of at most 300 records, and every counter comes out exact."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    pipeline.extra_env.update(FAST_IDLE, LIVESTREAM_BATCH_MAX_RECORDS="300")
    result = pipeline.replay(scale=SCALE, seed=41, batch=1)
    settings = pipeline.settings()

    async def commit_half_way() -> int:
        consumer = AIOKafkaConsumer(
            **settings.kafka_client_options(), group_id=settings.app_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [TopicPartition(settings.events_topic, p) for p in range(pipeline.partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.commit({tp: ends[tp] // 2 for tp in tps})
            return sum(ends[tp] // 2 for tp in tps)
        finally:
            await consumer.stop()

    skipped = asyncio.run(commit_half_way())
    assert skipped > 1_000
    pipeline.start_worker()
    assert_exact(pipeline, result.oracle, seed=41)
    log = pipeline.worker_log()
    reread = sum(int(line.split(": ")[-1].split()[0]) for line in log.splitlines() if "records re-read" in line)
    assert reread == skipped, log[-4000:]


@pytest.mark.slow
@BATCHES
def test_kafka_broker_down_longer_than_the_idle_timeout(pipeline: Pipeline, batch: int) -> None:
    """The broker is away for longer than the idle timeout: a Kafka outage is not the livestreams' silence, so no
    window closes early (no partial 5-minute window, no campaign minute without its livestreams) and no
    ``stream_down`` fires."""

    def inject(pipe: Pipeline, replay: BackgroundReplay) -> None:
        replay.at(0.4)
        subprocess.run([str(LOCAL / "kafka.sh"), "stop"], check=True, timeout=120)
        time.sleep(float(FAST_IDLE["LIVESTREAM_IDLE_TIMEOUT_S"]) + 5)
        subprocess.run([str(LOCAL / "kafka.sh"), "start"], check=True, timeout=120)

    run_scenario(pipeline, inject, batch=batch)


def local_broker_pid() -> int:
    """The pid of the local Kafka broker (the JVM running ``kafka.Kafka``), whichever checkout started it."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"kafka.Kafka" in command:
                return int(entry.name)
    raise AssertionError("no local Kafka broker process found")


@pytest.mark.slow
def test_kafka_broker_paused_for_30_seconds(pipeline: Pipeline) -> None:
    """The broker stands still (SIGSTOP) for 30 s, longer than the idle timeout and the group session: the idle
    ticks resume within seconds of SIGCONT (a round that is never acknowledged does not stop them), and nothing
    closes early or counts twice."""
    pid = local_broker_pid()
    resumed: list[float] = []

    def inject(pipe: Pipeline, replay: BackgroundReplay) -> None:
        replay.at(0.4)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(30)
        finally:
            os.kill(pid, signal.SIGCONT)
            resumed.append(time.time())

    run_scenario(pipeline, inject)
    ticks = [
        r.timestamp / 1000
        for r in pipeline.read_topic(pipeline.settings().events_topic)
        if TICK_HEADER in r.headers and r.timestamp / 1000 >= resumed[0]
    ]
    assert ticks, "no idle tick after the broker came back"
    assert min(ticks) - resumed[0] < 10, f"the first tick came {min(ticks) - resumed[0]:.1f} s after SIGCONT"


@pytest.mark.slow
@BATCHES
def test_redis_down_for_20_seconds(pipeline: Pipeline, batch: int) -> None:
    def inject(pipe: Pipeline, replay: BackgroundReplay) -> None:
        replay.at(0.3)
        subprocess.run([str(LOCAL / "redis.sh"), "stop"], check=True, timeout=60)
        time.sleep(20)
        subprocess.run([str(LOCAL / "redis.sh"), "start"], check=True, timeout=60)

    run_scenario(pipeline, inject, batch=batch)
    errors = [line for line in pipeline.metrics_text().splitlines() if line.startswith("livestream_redis_errors_total")]
    assert errors and float(errors[0].split()[-1]) > 0, "the outage must have been seen and counted"
