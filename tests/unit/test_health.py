"""Partition health (agents/health.py): stalled partitions, readiness and liveness from snapshot states, and how
``/readyz``, ``/healthz``, ``/api/totals`` and ``/metrics`` render them (handlers called directly, no server)."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest

from agents import api
from agents.health import DEFAULT_STALL_AFTER_S, liveness, readiness, stall_after, stalled_partitions
from agents.metrics import build_registry
from stream.settings import Settings
from stream.snapshot import LiveSnapshot

NOW = 1_687_600_000.0
TOPIC = "ns.events"


def snapshot(
    owned: set[int] | None = None,
    lag: dict[int, int] | None = None,
    progress: dict[int, float] | None = None,
    ready: bool = True,
    failure: str | None = None,
) -> LiveSnapshot:
    live = LiveSnapshot()
    live.owned_partitions = set(owned or ())
    live.lag = dict(lag or {})
    live.progress_at_s = dict(progress or {})
    live.ready = ready
    live.fold_failure = failure
    return live


def healthy() -> LiveSnapshot:
    """Three owned partitions: one busy with recent progress, one caught up long ago, one caught up just now."""
    return snapshot({0, 1, 2}, lag={0: 500, 1: 0, 2: 0}, progress={0: NOW - 1, 1: NOW - 3600, 2: NOW})


# --- stalled_partitions -----------------------------------------------------------------------------------------------


def test_partition_with_lag_and_old_progress_is_stalled() -> None:
    live = snapshot({0, 1}, lag={0: 120, 1: 120}, progress={0: NOW - 61, 1: NOW - 5})
    assert stalled_partitions(live, NOW, 60) == {0: pytest.approx(61)}


def test_caught_up_partition_with_old_progress_is_not_stalled() -> None:
    live = snapshot({3}, lag={3: 0}, progress={3: NOW - 86_400})
    assert stalled_partitions(live, NOW, 60) == {}
    # No lag reported at all yet counts as caught up too.
    assert stalled_partitions(snapshot({3}, progress={3: NOW - 86_400}), NOW, 60) == {}


def test_stall_timeout_is_exclusive_and_a_parameter() -> None:
    live = snapshot({0}, lag={0: 1}, progress={0: NOW - 60})
    assert stalled_partitions(live, NOW, 60) == {}
    assert stalled_partitions(live, NOW + 0.5, 60) == {0: pytest.approx(60.5)}
    assert stalled_partitions(live, NOW, 30) == {0: pytest.approx(60)}
    assert stalled_partitions(live, NOW) == {}  # default 60 s
    assert DEFAULT_STALL_AFTER_S == 60


def test_owned_partition_with_lag_and_no_progress_recorded_is_stalled() -> None:
    live = snapshot({4}, lag={4: 10})
    assert stalled_partitions(live, NOW, 60) == {4: math.inf}


def test_only_owned_partitions_count() -> None:
    """A lag entry left for a partition this worker no longer owns is its new owner's business."""
    live = snapshot({0}, lag={0: 0, 7: 900}, progress={0: NOW, 7: NOW - 3600})
    assert stalled_partitions(live, NOW, 60) == {}


def test_progress_in_the_future_is_not_stalled() -> None:
    live = snapshot({0}, lag={0: 5}, progress={0: NOW + 2})  # clock step backwards
    assert stalled_partitions(live, NOW, 60) == {}


# --- readiness and liveness ------------------------------------------------------------------------------------------


def test_healthy_worker_is_ready_and_alive() -> None:
    assert readiness(healthy(), NOW, 60) == (True, [])
    assert liveness(healthy()) == (True, [])


def test_worker_without_partitions_is_ready_once_assigned() -> None:
    assert readiness(snapshot(), NOW, 60) == (True, [])


def test_not_ready_before_assignment_and_recovery() -> None:
    live = healthy()
    live.ready = False
    ok, reasons = readiness(live, NOW, 60)
    assert not ok
    assert reasons == ["partitions not assigned or state not recovered yet"]
    assert liveness(live) == (True, [])


def test_stalled_partition_makes_the_worker_not_ready_but_alive() -> None:
    live = healthy()
    live.progress_at_s[0] = NOW - 90
    ok, reasons = readiness(live, NOW, 60)
    assert not ok
    assert reasons == ["partition 0 stalled: 500 records waiting, no progress for 90s"]
    assert liveness(live) == (True, [])
    # Progress again: ready again.
    live.progress_at_s[0] = NOW
    assert readiness(live, NOW, 60) == (True, [])


def test_fold_failure_is_neither_ready_nor_alive() -> None:
    live = healthy()
    live.fold_failure = "RuntimeError: table write failed"
    ok, reasons = readiness(live, NOW, 60)
    assert not ok
    assert reasons == ["processing loop failed: RuntimeError: table write failed"]
    assert liveness(live) == (False, ["processing loop failed: RuntimeError: table write failed"])


def test_every_reason_is_listed() -> None:
    live = snapshot({1, 2}, lag={1: 3, 2: 4}, progress={1: NOW - 100}, ready=False, failure="boom")
    ok, reasons = readiness(live, NOW, 60)
    assert not ok
    assert reasons == [
        "processing loop failed: boom",
        "partitions not assigned or state not recovered yet",
        "partition 1 stalled: 3 records waiting, no progress for 100s",
        "partition 2 stalled: 4 records waiting, no progress recorded",
    ]


def test_stall_after_reads_the_setting_when_there_is_one() -> None:
    assert stall_after(Settings()) == getattr(Settings(), "stall_after_s", 60.0)
    assert stall_after(SimpleNamespace()) == 60.0
    assert stall_after(SimpleNamespace(stall_after_s=15)) == 15.0


# --- web views -------------------------------------------------------------------------------------------------------


class FakeWeb:
    @staticmethod
    def json(value: Any, *, status: int = 200, **_: Any) -> tuple[int, Any]:
        return status, value


class FakeApp:
    def __init__(self) -> None:
        self.pages: dict[str, Callable[..., Any]] = {}

    def page(self, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.pages[path] = handler
            return handler

        return register


def call(live: LiveSnapshot, path: str) -> tuple[int, Any]:
    app = FakeApp()
    api.register(app, Settings(), live, clock=lambda: NOW)  # type: ignore[arg-type]
    result: tuple[int, Any] = asyncio.run(app.pages[path](FakeWeb(), None))
    return result


def test_readyz_and_healthz_answer_200_when_healthy() -> None:
    assert call(healthy(), "/readyz") == (200, {"ready": True})
    assert call(healthy(), "/healthz") == (200, {"alive": True})
    status, totals = call(healthy(), "/api/totals")
    assert status == 200
    assert totals["ready"] is True


def test_readyz_answers_503_with_reasons_when_stalled() -> None:
    live = snapshot({0, 5}, lag={0: 7, 5: 2}, progress={0: NOW - 120})
    status, body = call(live, "/readyz")
    assert status == 503
    assert body == {
        "ready": False,
        "reasons": [
            "partition 0 stalled: 7 records waiting, no progress for 120s",
            "partition 5 stalled: 2 records waiting, no progress recorded",
        ],
        "stalled_partitions": {"0": 120.0, "5": None},
    }
    assert call(live, "/healthz") == (200, {"alive": True})
    assert (call(live, "/api/totals"))[1]["ready"] is False


def test_healthz_answers_503_after_a_fold_failure() -> None:
    live = healthy()
    live.fold_failure = "boom"
    assert call(live, "/healthz") == (503, {"alive": False, "reasons": ["processing loop failed: boom"]})
    status, body = call(live, "/readyz")
    assert status == 503
    assert body["reasons"] == ["processing loop failed: boom"]


def test_api_totals_is_not_ready_before_assignment() -> None:
    assert (call(snapshot(ready=False), "/api/totals"))[1]["ready"] is False


# --- metrics ---------------------------------------------------------------------------------------------------------


def render(live: LiveSnapshot, partitions: int = 4) -> str:
    registry = build_registry(live, Settings(namespace="ns", partitions=partitions), clock=lambda: NOW)
    return generate_latest(registry).decode()


def samples(text: str, prefix: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_render_partition_health() -> None:
    live = snapshot({0, 2}, lag={0: 9, 2: 0}, progress={0: NOW - 75, 2: NOW - 3600})
    text = render(live)
    owned = 'livestream_partition_owned{partition="%d",topic="ns.events"}'
    assert samples(text, "livestream_partition_owned") == {
        owned % 0: 1.0,
        owned % 1: 0.0,
        owned % 2: 1.0,
        owned % 3: 0.0,
    }
    assert samples(text, "livestream_topic_partitions") == {'livestream_topic_partitions{topic="ns.events"}': 4.0}
    assert samples(text, "livestream_owned_partitions") == {"livestream_owned_partitions": 2.0}
    assert samples(text, "livestream_partition_stalled") == {
        'livestream_partition_stalled{partition="0",topic="ns.events"}': 1.0,
        'livestream_partition_stalled{partition="2",topic="ns.events"}': 0.0,
    }
    assert samples(text, "livestream_partition_last_progress_timestamp_seconds") == {
        'livestream_partition_last_progress_timestamp_seconds{partition="0",topic="ns.events"}': NOW - 75,
        'livestream_partition_last_progress_timestamp_seconds{partition="2",topic="ns.events"}': NOW - 3600,
    }
    assert samples(text, "livestream_worker_ready") == {"livestream_worker_ready": 0.0}
    assert samples(text, "livestream_fold_failed") == {"livestream_fold_failed": 0.0}
    # The existing per-partition lag gauge is unchanged.
    assert samples(text, "livestream_consumer_lag_records") == {
        'livestream_consumer_lag_records{partition="0",topic="ns.events"}': 9.0,
        'livestream_consumer_lag_records{partition="2",topic="ns.events"}': 0.0,
    }


def test_metrics_of_a_healthy_and_of_a_failed_worker() -> None:
    text = render(healthy(), partitions=3)
    assert samples(text, "livestream_worker_ready") == {"livestream_worker_ready": 1.0}
    assert set(samples(text, "livestream_partition_stalled").values()) == {0.0}
    live = healthy()
    live.fold_failure = "boom"
    text = render(live, partitions=3)
    assert samples(text, "livestream_worker_ready") == {"livestream_worker_ready": 0.0}
    assert samples(text, "livestream_fold_failed") == {"livestream_fold_failed": 1.0}


def test_partition_owned_beyond_the_configured_count_is_served() -> None:
    text = render(snapshot({5}, lag={5: 0}, progress={5: NOW}), partitions=2)
    assert samples(text, "livestream_partition_owned") == {
        'livestream_partition_owned{partition="0",topic="ns.events"}': 0.0,
        'livestream_partition_owned{partition="1",topic="ns.events"}': 0.0,
        'livestream_partition_owned{partition="5",topic="ns.events"}': 1.0,
    }


@pytest.mark.parametrize("state", ["empty", "healthy", "stalled"])
def test_metrics_pass_promtool_lint(state: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: deploy/local/test-deps.sh installs Debian's prometheus package", pytrace=False)
    live = {
        "empty": LiveSnapshot(),
        "healthy": healthy(),
        "stalled": snapshot({0}, lag={0: 1}, ready=False, failure="boom"),
    }[state]
    result = subprocess.run(
        [promtool, "check", "metrics"], input=render(live), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
