"""The freeze guard: a process that stood still past the limit exits at once, its local tables gone; a busy event
loop is not a stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from agents.freeze import EXIT_FROZEN, FreezeGuard


def test_the_guard_is_inert_until_its_thread_runs() -> None:
    guard = FreezeGuard(limit_s=0.0, tables_dir=None)
    guard.last_beat -= 60  # a slow start (imports, Kafka checks, recovery) is not a stall
    guard.check()  # no exit
    assert not guard.armed


def test_beats_closer_than_the_limit_leave_the_guard_untripped() -> None:
    guard = FreezeGuard(limit_s=1.0, tables_dir=None)
    start = guard.last_beat
    for step in range(1, 20):
        guard.beat(start + step * 0.9)
    assert guard.stood_still_s is None
    assert 0.89 < guard.longest_gap_s < 0.91


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=60)


def _tables(tmp_path: Path) -> Path:
    tables = tmp_path / "v1" / "tables" / "states-0.db"
    tables.mkdir(parents=True)
    (tables / "CURRENT").write_text("MANIFEST-000001\n")
    return tmp_path / "v1" / "tables"


def test_a_busy_event_loop_is_not_a_stop(tmp_path: Path) -> None:
    """Five seconds of pure-Python work holding the loop, with a limit of one second: the beat thread still runs
    (the interpreter hands it the GIL), so the guard does not trip and the side effect after it happens."""
    tables = _tables(tmp_path)
    done = _run(
        f"""
        import time
        from pathlib import Path
        from agents.freeze import FreezeGuard
        guard = FreezeGuard(limit_s=1.0, tables_dir=Path({str(tables)!r}))
        guard.start()
        end = time.monotonic() + 5
        total = 0
        while time.monotonic() < end:
            total += sum(i * i for i in range(1000))
        guard.check()
        print("side effect", guard.longest_gap_s < 1.0)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "side effect True" in done.stdout
    assert tables.exists()


def test_a_stopped_process_exits_at_its_next_side_effect_and_discards_the_tables(tmp_path: Path) -> None:
    """SIGSTOP for longer than the limit, then SIGCONT: the process exits with EXIT_FROZEN, nothing after it runs."""
    tables = _tables(tmp_path)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from agents.freeze import FreezeGuard
                guard = FreezeGuard(limit_s=0.5, tables_dir=Path({str(tables)!r}))
                guard.start()
                print("ready", flush=True)
                while True:
                    guard.check()
                    time.sleep(0.01)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    child.send_signal(signal.SIGSTOP)
    time.sleep(1.5)
    child.send_signal(signal.SIGCONT)
    assert child.wait(30) == EXIT_FROZEN
    assert child.stderr is not None and "stood still" in child.stderr.read()
    assert not tables.exists()


def test_a_side_effect_after_a_stop_exits_even_before_the_thread_beats_again(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    done = _run(
        f"""
        import time
        from pathlib import Path
        from agents.freeze import FreezeGuard
        guard = FreezeGuard(limit_s=0.2, tables_dir=Path({str(tables)!r}))
        guard.armed = True  # as when its thread runs, but the thread has not beaten since
        guard.last_beat = time.monotonic() - 0.5
        guard.check()
        print("not reached")
        """
    )
    assert done.returncode == EXIT_FROZEN, done.stderr
    assert "not reached" not in done.stdout
    assert not tables.exists()


def test_the_producer_writes_no_request_after_a_stop(tmp_path: Path) -> None:
    """aiokafka's produce requests are checked too: records the producer held at a stop never reach the broker."""
    tables = _tables(tmp_path)
    done = _run(
        f"""
        import asyncio, time
        from pathlib import Path
        from aiokafka.producer.sender import SendProduceReqHandler
        from agents import freeze
        freeze.guard_produce_requests()
        freeze.GUARD.tables_dir = Path({str(tables)!r})
        freeze.GUARD.limit_s = 0.2
        freeze.GUARD.armed = True
        freeze.GUARD.last_beat = time.monotonic() - 1.0  # stopped, and not seen by the thread yet

        class NoBroker:
            def create_request(self):
                print("request written")

        asyncio.run(SendProduceReqHandler.do(NoBroker(), 1))
        """
    )
    assert done.returncode == EXIT_FROZEN, done.stderr
    assert "request written" not in done.stdout
    assert not tables.exists() and list(tmp_path.glob("v1/tables.discarded-*"))
