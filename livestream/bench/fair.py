"""Wall time of the full fair replay: ``livestream demo --once`` (batch envelopes) in a benchmark namespace.

The demo's own clock runs from the start of the replay (worker up and ready) until the totals in Redis equal the
oracle, so it includes producing, catching up and mirroring. It runs as a child process under an explicit
namespace (so it never touches another demo's topics) and must report ``exact: true``.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from livestream.bench.common import BenchError, livestream_command
from stream.settings import Settings


@dataclass(frozen=True)
class FairResult:
    seconds: float
    events: int
    produce_seconds: float
    totals: dict[str, int]


def measure_fair(settings: Settings, scale: float, batch: int, log_path: Path, timeout: float = 900) -> FairResult:
    command = livestream_command(settings, "demo", "--once", "--scale", str(scale), "--batch", str(batch))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as err:
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"demo --once did not finish in {timeout:.0f} s; log {log_path}") from None
    lines = done.stdout.decode().strip().splitlines()
    if not lines:
        raise BenchError(f"demo --once printed nothing (exit {done.returncode}); log {log_path}")
    line = json.loads(lines[-1])
    if done.returncode != 0 or not line.get("exact"):
        raise BenchError(f"demo --once totals are not exact (exit {done.returncode}): {line}; log {log_path}")
    totals = {k: int(line[k]) for k in ("views", "orders", "gmv_vnd", "livestreams", "creators")}
    return FairResult(float(line["replay_seconds"]), int(line["events"]), float(line["produce_seconds"]), totals)
