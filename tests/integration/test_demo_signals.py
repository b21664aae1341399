"""Commands that start child processes stop them when they are stopped: ``livestream demo`` on SIGTERM (as sent by
``timeout``, systemd or ``docker stop``) stops its worker, frees the worker's port and exits 143."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from livestream.bench.common import cleanup_namespace
from stream.settings import Settings
from tests.support import free_port, wait_until


def children(pid: int) -> dict[int, tuple[str, str]]:
    """Live child processes of ``pid``: pid -> (start time in clock ticks, command line)."""
    found: dict[int, tuple[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
            found[int(entry.name)] = (fields[19].decode(), cmdline)
    return found


def running(pid: int, started: str) -> bool:
    """True while process ``pid`` that started at ``started`` has not exited (a reused pid is another process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    return fields[19].decode() == started and fields[0] not in (b"Z", b"X")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def answers(url: str, demo: subprocess.Popen[bytes], log: Path) -> bool:
    if demo.poll() is not None:
        raise AssertionError(f"demo exited with {demo.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.mark.services
def test_demo_stops_its_worker_on_sigterm(services: None, tmp_path: Path) -> None:
    namespace, port, log = f"t{uuid.uuid4().hex[:10]}", free_port(), tmp_path / "demo.log"
    command = [sys.executable, "-m", "livestream", "--namespace", namespace, "--web-port", str(port)]
    command += ["--data-dir", str(tmp_path / "worker"), "demo", "--scale", "0.01"]
    with log.open("ab") as out:
        demo = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    worker: dict[int, tuple[str, str]] = {}
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/api/totals", demo, log), 120, f"the worker on {port}")
        worker = {pid: c for pid, c in children(demo.pid).items() if "livestream worker" in c[1]}
        assert len(worker) == 1, f"one worker child expected: {children(demo.pid)}"
        [(worker_pid, (worker_started, _))] = worker.items()

        stopped_at = time.monotonic()
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(20) == 128 + signal.SIGTERM
        wait_until(lambda: not running(worker_pid, worker_started), 20 - (time.monotonic() - stopped_at), "no worker")
        wait_until(lambda: port_free(port), 20 - (time.monotonic() - stopped_at), f"port {port} to be free")
        assert time.monotonic() - stopped_at < 20
        assert "SIGTERM received" in log.read_text(errors="replace")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        for pid, (started, _) in worker.items():
            if running(pid, started):
                os.kill(pid, signal.SIGKILL)
        settings = Settings()
        cleanup_namespace(settings, namespace)


CHILD_IGNORING_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
)
PARENT = textwrap.dedent(
    f"""
    import subprocess, sys, time
    import livestream.processes as processes

    with processes.children_stopped_on_signals(grace_s=1.0, name="test"):
        polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        stubborn = subprocess.Popen([sys.executable, "-c", {CHILD_IGNORING_SIGTERM!r}], stdout=subprocess.PIPE)
        stubborn.stdout.readline()
        print(polite.pid, stubborn.pid, flush=True)
        try:
            time.sleep(600)
        finally:
            print("finally ran", polite.wait(), stubborn.wait(), flush=True)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_stops_every_child_then_exits_128_plus_signal(sig: signal.Signals) -> None:
    """The mechanism behind demo and bench, with a child that ignores SIGTERM (killed after the grace period)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    try:
        assert parent.stdout is not None
        polite, stubborn = (int(pid) for pid in parent.stdout.readline().split())
        kids = children(parent.pid)
        assert set(kids) == {polite, stubborn}
        stopped_at = time.monotonic()
        parent.send_signal(sig)
        out, err = parent.communicate(timeout=15)
        assert parent.returncode == 128 + sig, err.decode()
        assert time.monotonic() - stopped_at < 5
        assert out.decode().split() == ["finally", "ran", str(-signal.SIGTERM), str(-signal.SIGKILL)]
        assert not any(running(pid, started) for pid, (started, _) in kids.items())
        assert f"{sig.name} received" in err.decode() and f"killed child processes [{stubborn}]" in err.decode()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _start_demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], str, int, Path]:
    namespace, port, log = f"t{uuid.uuid4().hex[:10]}", free_port(), tmp_path / "demo.log"
    command = [sys.executable, "-m", "livestream", "--namespace", namespace, "--web-port", str(port)]
    command += ["--data-dir", str(tmp_path / "worker"), "demo", *args]
    with log.open("ab") as out:
        demo = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return demo, namespace, port, log


def _the_worker(demo: subprocess.Popen[bytes]) -> tuple[int, str]:
    found = {pid: c for pid, c in children(demo.pid).items() if "livestream worker" in c[1]}
    assert len(found) == 1, f"one worker child expected: {children(demo.pid)}"
    [(pid, (started, _))] = found.items()
    return pid, started


def _finish(demo: subprocess.Popen[bytes], namespace: str) -> None:
    if demo.poll() is None:
        demo.kill()
        demo.wait(10)
    for pid, (started, command) in children(demo.pid).items():
        if "livestream worker" in command and running(pid, started):
            os.kill(pid, signal.SIGKILL)
    cleanup_namespace(Settings(), namespace)


@pytest.mark.services
def test_demo_stops_producing_at_once_when_its_worker_dies(services: None, tmp_path: Path) -> None:
    """A worker killed mid-replay: the demo says so within seconds, stops the replay and exits 1."""
    demo, namespace, port, log = _start_demo(tmp_path, "--once", "--scale", "0.01", "--speed", "300")
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/api/totals", demo, log), 120, f"the worker on {port}")
        time.sleep(3)  # the replay (about 57 s at this speed) is under way
        worker_pid, _ = _the_worker(demo)
        os.kill(worker_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert demo.wait(20) == 1
        assert time.monotonic() - killed_at < 10
        text = log.read_text(errors="replace")
        assert f"the worker exited with status {-signal.SIGKILL}" in text and "replay stopped" in text, text[-3000:]
        assert '"exact"' not in text
    finally:
        _finish(demo, namespace)


@pytest.mark.services
def test_demo_restarts_a_worker_that_fenced_itself_and_stays_exact(services: None, tmp_path: Path) -> None:
    """A worker stopped past its session timeout fences itself (exit 75) when it runs again; the demo starts it
    again, as a supervisor would, and the totals are still exact."""
    demo, namespace, port, log = _start_demo(tmp_path, "--once", "--scale", "0.01", "--speed", "600")
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/api/totals", demo, log), 120, f"the worker on {port}")
        time.sleep(2)
        worker_pid, _ = _the_worker(demo)
        os.kill(worker_pid, signal.SIGSTOP)
        time.sleep(9)  # over the freeze guard's limit (session 10 s - heartbeat 2 s - 1 s)
        os.kill(worker_pid, signal.SIGCONT)
        assert demo.wait(240) == 0, log.read_text(errors="replace")[-3000:]
        text = log.read_text(errors="replace")
        assert "it fenced itself after a stop" in text and '"exact": true' in text, text[-3000:]
    finally:
        _finish(demo, namespace)
