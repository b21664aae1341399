"""The freeze guard: a loop that stood still past the limit exits the worker at once, its local tables gone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from agents.freeze import EXIT_FROZEN, FreezeGuard


def test_the_guard_is_inert_until_its_watchdog_runs() -> None:
    guard = FreezeGuard(limit_s=0.0, tables_dir=None)
    guard.last_tick -= 60  # a slow start (imports, Kafka checks, recovery) is not a stall
    guard.check()  # no exit
    assert not guard.armed


def test_a_loop_that_stood_still_exits_and_discards_the_tables(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables" / "states-0.db"
    tables.mkdir(parents=True)
    (tables / "CURRENT").write_text("MANIFEST-000001\n")
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from agents.freeze import FreezeGuard
        guard = FreezeGuard(limit_s=0.2, tables_dir=Path({str(tmp_path / "v1" / "tables")!r}))
        guard.armed = True  # as when its watchdog runs
        guard.last_tick = time.monotonic()
        time.sleep(0.5)  # as if the process had been stopped
        guard.check()
        print("not reached")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_FROZEN, done.stderr
    assert "not reached" not in done.stdout
    assert "stood still" in done.stderr
    assert not (tmp_path / "v1" / "tables").exists()
