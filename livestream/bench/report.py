"""The benchmark's output: a table of figures and targets, and one final JSON line (pure functions, no services).

Figures are kept in a flat dict keyed like the JSON line. :data:`REQUIRED_KEYS` are always present in the JSON
line (``null`` when their step was skipped or failed); extra keys (CPU seconds per million events, peaks, rates)
follow them, and :data:`APPENDED_KEYS` (the scaling and takeover steps' figures, also always present) come last.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from livestream.bench.common import to_jsonable

REQUIRED_KEYS: Final = (
    "faust_passthrough_eps",
    "pipeline_single_eps",
    "pipeline_batch_eps",
    "quix_window_eps",
    "aiokafka_drain_eps",
    "latency_p50_ms",
    "latency_p99_ms",
    "rss_mb_1k",
    "rss_mb_10k",
    "rss_mb_100k",
    "fair_replay_seconds",
)

APPENDED_KEYS: Final = (
    "scaling_eps_1w",
    "scaling_eps_2w",
    "scaling_eps_3w",
    "scaling_eps_per_worker_2w",
    "scaling_eps_per_worker_3w",
    "takeover_kill9_s_standby0",
    "takeover_kill9_s_standby1",
    "takeover_join_s_standby0",
    "takeover_join_s_standby1",
    "takeover_sigterm_s_standby0",
    "takeover_sigterm_s_standby1",
    "gateway_eps",
    "gateway_p99_ms",
    "pipeline_crc32_eps",
)

Figures = Mapping[str, float | int | None]


@dataclass(frozen=True)
class Target:
    """One target of the issue: ``value`` compared with ``limit`` (``>=`` or ``<``/``<=``); None if not measured."""

    name: str
    value: float | None
    op: str
    limit: float

    @property
    def met(self) -> bool | None:
        if self.value is None or not math.isfinite(self.value):
            return None
        if self.op == ">=":
            return self.value >= self.limit
        if self.op == "<":
            return self.value < self.limit
        return self.value <= self.limit

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]


def _get(figures: Figures, key: str) -> float | None:
    value = figures.get(key)
    return None if value is None else float(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(figures: Figures) -> list[Target]:
    """The targets of the issue, evaluated on figures of one run."""
    single, passthrough = _get(figures, "pipeline_single_eps"), _get(figures, "faust_passthrough_eps")
    batch, quix = _get(figures, "pipeline_batch_eps"), _get(figures, "quix_window_eps")
    crc32 = _get(figures, "pipeline_crc32_eps")
    return [
        Target("pipeline single / quixstreams window", _ratio(single, quix), ">=", 3.0),
        Target("pipeline single events/s per worker", single, ">=", 60_000),
        Target("pipeline single / faust pass-through", _ratio(single, passthrough), ">=", 0.9),
        Target("pipeline CRC32-placed / single (murmur2)", _ratio(crc32, single), ">=", 0.7),
        Target("pipeline batch events/s per worker", batch, ">=", 150_000),
        Target("pipeline batch / quixstreams window", _ratio(batch, quix), ">=", 1.5),
        Target("p50 event -> Redis at 50% single rate (ms)", _get(figures, "latency_p50_ms"), "<=", 100),
        Target("p99 event -> Redis at 50% single rate (ms)", _get(figures, "latency_p99_ms"), "<=", 250),
        Target("RSS at 100k active livestreams (MB)", _get(figures, "rss_mb_100k"), "<=", 300),
        Target("full fair replay wall (s)", _get(figures, "fair_replay_seconds"), "<", 30),
        Target("events/s through one gateway", _get(figures, "gateway_eps"), ">=", 50_000),
        Target("gateway request p99 at 50% rate (ms)", _get(figures, "gateway_p99_ms"), "<=", 50),
    ]


def final_line(figures: Figures) -> str:
    """The JSON line: every required key (null if missing), then the extra keys, then every appended key (null if
    missing), floats rounded to 2 places."""
    line = {key: to_jsonable(figures.get(key)) for key in REQUIRED_KEYS}
    line.update({k: to_jsonable(v) for k, v in figures.items() if k not in line and k not in APPENDED_KEYS})
    line.update({key: to_jsonable(figures.get(key)) for key in APPENDED_KEYS})
    return json.dumps(line)


def _fmt(value: float | int | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:,.2f}{unit}"


THROUGHPUT_ROWS: Final = (
    ("aiokafka drain (transport ceiling)", "aiokafka_drain"),
    ("faust pass-through (ceiling)", "faust_passthrough"),
    ("quixstreams 1-min window count", "quix_window"),
    ("pipeline, single-event records", "pipeline_single"),
    ("pipeline, single events placed by CRC32", "pipeline_crc32"),
    ("pipeline, batch envelopes", "pipeline_batch"),
)


def table(figures: Figures) -> str:
    """A plain-text table of the figures and the targets."""
    lines = [f"{'consumer (one worker process)':<40} {'events/s':>12} {'CPU s / M events':>17} {'events':>10}"]
    for label, key in THROUGHPUT_ROWS:
        lines.append(
            f"{label:<40} {_fmt(figures.get(f'{key}_eps')):>12} {_fmt(figures.get(f'{key}_cpu_s_per_m')):>17} "
            f"{_fmt(figures.get(f'{key}_events')):>10}"
        )
    lines.append("")
    lines.append(
        f"latency event -> Redis at {_fmt(figures.get('latency_rate_eps'))} events/s: "
        f"p50 {_fmt(figures.get('latency_p50_ms'), ' ms')}, p99 {_fmt(figures.get('latency_p99_ms'), ' ms')}, "
        f"max {_fmt(figures.get('latency_max_ms'), ' ms')} ({_fmt(figures.get('latency_samples'))} views)"
    )
    for n in ("1k", "10k", "100k"):
        lines.append(
            f"worker RSS with {n:>4} active livestreams: {_fmt(figures.get(f'rss_mb_{n}'), ' MB')} "
            f"(peak {_fmt(figures.get(f'rss_peak_mb_{n}'), ' MB')}, "
            f"idle {_fmt(figures.get(f'rss_idle_mb_{n}'), ' MB')})"
        )
    lines.append(
        f"full fair replay (demo --once): {_fmt(figures.get('fair_replay_seconds'), ' s')} wall, "
        f"{_fmt(figures.get('fair_events'))} events, exact totals"
        if figures.get("fair_replay_seconds") is not None
        else "full fair replay (demo --once): -"
    )
    lines.append("")
    lines.append(f"{'workers in one group (12 partitions)':<40} {'events/s':>12} {'per worker':>12} {'steady':>12}")
    for workers in (1, 2, 3):
        total = figures.get(f"scaling_eps_{workers}w")
        per_worker = figures.get(f"scaling_eps_per_worker_{workers}w", total if workers == 1 else None)
        lines.append(
            f"{f'scaling, {workers} worker(s)':<40} {_fmt(total):>12} {_fmt(per_worker):>12} "
            f"{_fmt(figures.get(f'scaling_steady_eps_{workers}w')):>12}"
        )
    lines.append("")
    lines.append(f"{'takeover: event -> settled (all owned), s':<40} {'standby 0':>16} {'standby 1':>16}")
    for event, label in (
        ("kill9", "kill -9 of one of two workers"),
        ("join", "a worker joins one"),
        ("sigterm", "SIGTERM of one of two workers"),
    ):
        cells = []
        for standby in (0, 1):
            settled = _fmt(figures.get(f"takeover_{event}_s_standby{standby}"))
            owned = _fmt(figures.get(f"takeover_{event}_owned_s_standby{standby}"))
            cells.append(f"{settled} ({owned})")
        lines.append(f"{label:<40} {cells[0]:>16} {cells[1]:>16}")
    lines.append("")
    lines.append(
        f"ingestion gateway (one process, 8 clients): {_fmt(figures.get('gateway_eps'))} events/s; requests at "
        f"{_fmt(figures.get('gateway_latency_rate_eps'))} events/s: p50 {_fmt(figures.get('gateway_p50_ms'), ' ms')}, "
        f"p99 {_fmt(figures.get('gateway_p99_ms'), ' ms')}"
    )
    lines.append("")
    lines.append(f"{'target':<44} {'value':>12} {'':>2} {'limit':>10}  verdict")
    for target in targets(figures):
        lines.append(
            f"{target.name:<44} {_fmt(target.value):>12} {target.op:>2} {_fmt(target.limit):>10}  {target.verdict}"
        )
    return "\n".join(lines)
