"""The ops board in a real browser: headless Chromium renders the worker's page, fed from Redis, during a scaled
fair with an injected order surge; the alert shows on top, then clears; at the end the totals, the sort order and a
sparkline per livestream match the oracle, and no figure is clipped."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import msgspec

from livestream.producer import produce_replay
from schemas.alerts import AlertRecord
from stream.replay.generator import FairReplay
from stream.replay.incidents import ScriptedReplay
from stream.replay.profile import OCOP_FAIR, scaled
from tests.support import Pipeline, wait_until

CAMPAIGN = "ocop-bac-giang-2023"
MINUTE = 60_000


def render_in_chromium(url: str, profile_dir: Path, budget_ms: int = 5000, width: int = 1600) -> str:
    """The DOM of ``url`` in a ``width`` px wide window after its scripts ran (virtual time lets the page's fetch
    and timers complete)."""
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
            f"--window-size={width},1000",
            f"--user-data-dir={profile_dir}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def tile(dom: str, name: str) -> str:
    found = re.search(rf'id="total-{name}" data-value="([^"]*)"', dom)
    assert found, f"tile {name} not rendered"
    return found.group(1)


def surge_replay() -> tuple[ScriptedReplay, str, int]:
    """The fair at scale 0.02 with 40 extra paid orders on a busy livestream 160 minutes in; returns the replay,
    the livestream and the index of the slice of the surge."""
    replay = ScriptedReplay.of(FairReplay(scaled(OCOP_FAIR, 0.02), 3))
    start = replay.slices[0].start_ms
    index = next(i for i, s in enumerate(replay.slices) if s.start_ms >= start + 160 * MINUTE)
    here, after = replay.slices[index], replay.slices[index + 1]
    # A livestream with events in the minute after the surge past its grace, so the surge minute closes at once.
    candidates = [
        cid
        for cid, events in here.by_channel.items()
        if any(e.ts_ms >= after.start_ms + 15_000 for e in after.by_channel.get(cid, []))
    ]
    channel = max(candidates, key=lambda cid: (len(here.by_channel[cid]), cid))
    replay.order_surge(channel, here.start_ms + 30_000, orders=40, amount_vnd=150_000)
    return replay, channel, index


def test_board_shows_the_fair_an_alert_that_clears_and_every_livestream(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.extra_env.update(LIVESTREAM_IDLE_TIMEOUT_S="20", LIVESTREAM_IDLE_TICK_S="1")
    pipeline.start_worker()
    replay, channel, index = surge_replay()
    settings = pipeline.settings()
    url = f"http://127.0.0.1:{pipeline.ports[-1]}/"
    first = ScriptedReplay(replay.slices[: index + 2])
    rest = ScriptedReplay(replay.slices[index + 2 :])

    asyncio.run(produce_replay(first, settings.kafka_client_options(), settings.events_topic, batch=50))
    pipeline.wait_redis_summary(CAMPAIGN, first.oracle.summary())

    def surge_active() -> bool:
        return any(
            a["rule"] == "order_surge" and a["channel_id"] == channel
            for a in pipeline.get_json("/api/v1/alerts")["items"]
        )

    wait_until(surge_active, 15, "the order surge alert")
    dom = render_in_chromium(url, tmp_path / "chromium", budget_ms=3000)
    assert 'data-loaded="1"' in dom, "the page never loaded its data"
    alert = re.search(
        r'<div class="alert sev-info" data-alert-id="order_surge\|([^|"]+)\|\d+" data-rule="order_surge"', dom
    )
    assert alert and alert.group(1) == channel, "the active alert is shown on top"
    assert int(tile(dom, "alerts")) == 1
    assert int(tile(dom, "gmv_vnd")) == first.oracle.gmv_vnd
    row = re.search(rf'data-channel="{re.escape(channel)}"[^>]*>.*?</tr>', dom)
    assert row and "order_surge" in row.group(0), "the livestream's row names its alert"

    asyncio.run(produce_replay(rest, settings.kafka_client_options(), settings.events_topic, batch=50))
    oracle = replay.oracle
    pipeline.wait_redis_summary(CAMPAIGN, oracle.summary())
    wait_until(lambda: pipeline.get_json("/api/v1/alerts")["items"] == [], 60, "the alert to clear")
    history = pipeline.get_json(f"/api/v1/alerts/history?channel={channel}")["items"]
    assert [(a["rule"], a["status"]) for a in history] == [("order_surge", "resolved")]
    published = [
        msgspec.json.decode(r.value or b"", type=AlertRecord) for r in pipeline.read_topic(settings.alerts_topic)
    ]
    resolution = [a for a in published if a.rule == "order_surge" and a.status == "resolved"]
    assert len(resolution) == 1 and history[0]["resolved_at_ms"] == resolution[0].at_ms, "the resolution's time"

    dom = render_in_chromium(url, tmp_path / "chromium")
    assert 'data-loaded="1"' in dom and 'data-clipped="0"' in dom, "every figure fits its card"
    assert 'class="alert ' not in dom and int(tile(dom, "alerts")) == 0, "the alert cleared"
    assert int(tile(dom, "gmv_vnd")) == oracle.gmv_vnd
    assert float(tile(dom, "gmv_usd")) == round(oracle.gmv_vnd / settings.vnd_per_usd, 2)
    assert int(tile(dom, "orders_paid")) == oracle.orders
    assert int(tile(dom, "items_sold")) == sum(c.items_sold for c in oracle.channels.values())
    assert int(tile(dom, "views")) == oracle.views
    assert int(tile(dom, "gpm_vnd")) == oracle.gmv_vnd * 1000 // oracle.views
    assert int(tile(dom, "livestreams")) == oracle.livestreams == 26
    assert int(tile(dom, "watching_now")) == 0, "every livestream ended: nobody is watching"
    rows = re.findall(r'<tr data-channel="([^"]+)" data-gmv="(\d+)" data-status="(\w+)" data-watching="(\d+)"', dom)
    assert {cid: int(gmv) for cid, gmv, _, _ in rows} == {cid: c.gmv_vnd for cid, c in oracle.channels.items()}
    assert [int(g) for _, g, _, _ in rows] == sorted((int(g) for _, g, _, _ in rows), reverse=True), "by GMV"
    assert {(status, watching) for _, _, status, watching in rows} == {("ended", "0")}
    sparks = re.findall(r'<svg class="spark gmv"[^>]*data-points="(\d+)"', dom)
    spans = {cid: min(30, c.last_ts_ms // MINUTE - c.first_ts_ms // MINUTE + 1) for cid, c in oracle.channels.items()}
    assert [int(n) for n in sparks] == [spans[cid] for cid, *_ in rows], "a sparkline of its last 30 minutes per row"
    minutes = re.findall(r'<rect class="bar"[^>]*data-start="(\d+)"', dom)
    assert len(minutes) == 30 and re.search(r'class="tick">\d\d:\d\d<', dom), "30 minutes on a time axis"

    for width in (1280, 1920):  # a laptop and a wall screen: every column in sight, no sideways scrolling
        dom = render_in_chromium(url, tmp_path / f"chromium-{width}", width=width)
        assert 'data-loaded="1"' in dom and 'data-overflow="0"' in dom, (width, re.findall(r'data-widths="[^"]*"', dom))

    dom = render_in_chromium(url + "?sort=views&order=asc&spark=views", tmp_path / "chromium")
    rows = re.findall(r'<tr data-channel="([^"]+)"[^>]*data-views="(\d+)"', dom)
    assert [cid for cid, _ in rows] == sorted(oracle.channels, key=lambda c: (oracle.channels[c].views, c))
    assert len(re.findall(r'<svg class="spark viewers"', dom)) == 26

    dom = render_in_chromium(url + f"#channel={channel}", tmp_path / "chromium")
    assert f'class="open" data-channel="{channel}"' in dom, "the detail view opens"
    detail = dom[dom.index('id="detail"') :]
    assert re.search(r'<tr data-alert-id="order_surge\|', detail), "its alert history"
    span = oracle.channels[channel].last_ts_ms // MINUTE - oracle.channels[channel].first_ts_ms // MINUTE + 1
    assert len(re.findall(r'<tr data-start="\d+">', detail)) == min(60, span), "its last 60 one-minute windows"
