"""The board keeps showing the last figures, marked "stale since ...", while Redis or the worker is away, and goes
live again when Redis is back. A real headless Chromium is driven over the DevTools protocol, on a real worker and
the real local Redis (stopped and started by deploy/local/redis.sh)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from livestream.producer import produce_replay
from livestream.services import LOCAL
from stream.replay.generator import FairReplay
from stream.replay.incidents import ScriptedReplay
from stream.replay.profile import OCOP_FAIR, scaled
from tests.support import Pipeline, free_port, wait_until

CAMPAIGN = "ocop-bac-giang-2023"


class Page:
    """One Chromium tab, evaluated over the DevTools protocol."""

    def __init__(self, url: str, profile_dir: Path) -> None:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        assert chromium, "Chromium is not installed (deploy/local/test-deps.sh installs Debian's chromium)"
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1600,1000",
                f"--user-data-dir={profile_dir}",
                f"--remote-debugging-port={self.port}",
                "--remote-allow-origins=*",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ws_url = ""
        wait_until(self._find_page, 60, "Chromium's DevTools endpoint")

    def _find_page(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as response:
                targets = json.loads(response.read())
        except OSError:
            return False
        pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
        if pages:
            self.ws_url = pages[0]["webSocketDebuggerUrl"]
        return bool(pages)

    def evaluate(self, expression: str) -> Any:
        async def run() -> Any:
            async with aiohttp.ClientSession() as session, session.ws_connect(self.ws_url, max_msg_size=0) as ws:
                await ws.send_json(
                    {"id": 1, "method": "Runtime.evaluate", "params": {"expression": expression, "returnByValue": True}}
                )
                while True:
                    message = await asyncio.wait_for(ws.receive_json(), 10)
                    if message.get("id") == 1:
                        return message.get("result", {}).get("result", {}).get("value")

        return asyncio.run(run())

    def state(self) -> dict[str, str]:
        found = self.evaluate(
            "JSON.stringify({loaded: document.body.dataset.loaded || '', stale: document.body.dataset.stale || '',"
            " status: document.getElementById('status').textContent,"
            " gmv: document.getElementById('total-gmv_vnd').dataset.value || ''})"
        )
        if found is None:  # the page is still loading (no body or status element yet)
            return {"loaded": "", "stale": "", "status": "", "gmv": ""}
        state: dict[str, str] = json.loads(found)
        return state

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def redis_sh(action: str) -> None:
    subprocess.run([str(LOCAL / "redis.sh"), action], check=True, timeout=60)


@pytest.mark.slow
def test_board_marks_stale_while_redis_or_the_worker_is_away(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.start_worker()
    settings = pipeline.settings()
    replay = ScriptedReplay.of(FairReplay(scaled(OCOP_FAIR, 0.005), 5))
    asyncio.run(produce_replay(replay, settings.kafka_client_options(), settings.events_topic, batch=50))
    oracle = replay.oracle
    pipeline.wait_redis_summary(CAMPAIGN, oracle.summary())

    page = Page(f"http://127.0.0.1:{pipeline.ports[-1]}/", tmp_path / "chromium")
    try:
        wait_until(lambda: page.state()["loaded"] == "1", 30, "the board to load its data", interval=0.5)
        live = page.state()
        assert live["stale"] == "0" and live["status"].startswith("live"), live
        assert int(live["gmv"]) == oracle.gmv_vnd

        redis_sh("stop")
        try:
            wait_until(lambda: page.state()["stale"] == "1", 20, "the board to say it is stale", interval=0.5)
            away = page.state()
            assert away["status"].startswith("stale since"), away
            assert int(away["gmv"]) == oracle.gmv_vnd, "the last figures stay on the screen"
        finally:
            redis_sh("start")
        wait_until(lambda: page.state()["stale"] == "0", 30, "the board to go live again", interval=0.5)
        assert int(page.state()["gmv"]) == oracle.gmv_vnd

        pipeline.stop_worker(pipeline.workers[-1], signal.SIGKILL)
        started = time.monotonic()
        wait_until(lambda: page.state()["stale"] == "1", 20, "the board to notice the worker is gone", interval=0.5)
        gone = page.state()
        assert gone["status"].startswith("stale since") and int(gone["gmv"]) == oracle.gmv_vnd, gone
        print(f"stale shown {time.monotonic() - started:.1f} s after the worker died")
    finally:
        page.close()
