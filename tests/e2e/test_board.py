"""The ops board in a real browser: headless Chromium renders the worker's page, fed from Redis, during a fair."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.support import Pipeline, wait_until

CAMPAIGN = "ocop-bac-giang-2023"


def render_in_chromium(url: str, profile_dir: Path) -> str:
    """The DOM of ``url`` after its scripts ran (virtual time lets the page's fetch and timers complete)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is not installed (deploy/local/test-deps.sh installs Debian's chromium)"
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile_dir}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def tile(dom: str, name: str) -> int:
    found = re.search(rf'id="total-{name}" data-value="(-?\d+)"', dom)
    assert found, f"tile {name} not rendered"
    return int(found.group(1))


def test_ops_board_renders_the_fair_totals_and_every_livestream(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.extra_env.update(LIVESTREAM_IDLE_TIMEOUT_S="5", LIVESTREAM_IDLE_TICK_S="1")
    pipeline.start_worker()
    oracle = pipeline.replay(scale=0.02, seed=3, batch=50).oracle
    pipeline.wait_redis_summary(CAMPAIGN, oracle.summary())
    prefix = pipeline.settings().redis_prefix
    minutes = len({start for _, start in oracle.windows})
    wait_until(
        lambda: pipeline.redis().zcard(f"{prefix}campaign:{CAMPAIGN}:windows") == minutes, 120, "every campaign window"
    )

    data = pipeline.get_json("/api/board")
    assert data["campaign"] == CAMPAIGN and data["alerts"] == []
    assert len(data["minutes"]) == 30, "the last 30 final campaign minutes"

    dom = render_in_chromium(f"http://127.0.0.1:{pipeline.ports[-1]}/", tmp_path / "chromium")
    assert 'data-loaded="1"' in dom, "the page never loaded its data"
    assert tile(dom, "gmv_vnd") == oracle.gmv_vnd
    assert tile(dom, "orders_paid") == oracle.orders
    assert tile(dom, "views") == oracle.views
    assert tile(dom, "livestreams") == oracle.livestreams == 26
    assert tile(dom, "creators") == oracle.creators
    assert tile(dom, "concurrent_viewers") == sum(max(0, c.concurrent) for c in oracle.channels.values())
    assert tile(dom, "alerts") == 0
    rows = re.findall(r'data-channel="([^"]+)" data-gmv="(\d+)"', dom)
    assert {channel: int(gmv) for channel, gmv in rows} == {cid: c.gmv_vnd for cid, c in oracle.channels.items()}
    assert [int(gmv) for _, gmv in rows] == sorted((int(gmv) for _, gmv in rows), reverse=True), "sorted by GMV"
    assert len(re.findall(r"data-start=", dom)) == 30
    assert "ended" in dom, "livestreams that sent live_end show as ended"
