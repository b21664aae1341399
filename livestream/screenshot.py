"""``make screenshot``: a real run (a worker, the fair replayed, its board in headless Chromium) saved as a PNG.

Uses the local Kafka and Redis (``livestream services up``), a throw-away namespace whose topics stay and whose Redis
keys are removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import redis

from livestream import readback, services
from livestream.producer import replay_fair
from stream.settings import Settings

CAMPAIGN = "ocop-bac-giang-2023"


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def screenshot(out: Path, scale: float, seed: int, width: int, height: int) -> None:
    services.up()
    namespace = f"shot{uuid.uuid4().hex[:8]}"
    root = Path(tempfile.mkdtemp(prefix="livestream-screenshot-"))
    port = 6070
    env = dict(
        os.environ,
        LIVESTREAM_NAMESPACE=namespace,
        LIVESTREAM_PARTITIONS="4",
        LIVESTREAM_WEB_PORT=str(port),
        LIVESTREAM_DATA_DIR=str(root / "worker"),
        LIVESTREAM_IDLE_TIMEOUT_S="5",
        LIVESTREAM_IDLE_TICK_S="1",
    )
    overrides: dict[str, object] = {"namespace": namespace, "partitions": 4}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    log = (root / "worker.log").open("ab")
    worker = subprocess.Popen([sys.executable, "-m", "livestream", "worker"], env=env, stdout=log, stderr=log)
    client = redis.Redis.from_url(settings.redis_url)
    try:

        def ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                return bool(response.status == 200)

        _wait(ready, 120, "the worker")
        oracle = asyncio.run(replay_fair(settings, scale=scale, seed=seed, batch=500)).oracle
        _wait(
            lambda: (
                readback.summary(readback.read_campaign(client, settings.redis_prefix, CAMPAIGN)) == oracle.summary()
            ),
            600,
            "the replay's totals in Redis",
        )
        minutes = len({start for _, start in oracle.windows})
        _wait(lambda: client.zcard(f"{settings.redis_prefix}campaign:{CAMPAIGN}:windows") == minutes, 120, "minutes")
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not chromium:
            raise SystemExit("Chromium is not installed (deploy/local/test-deps.sh installs Debian's chromium)")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-background-networking",
                f"--user-data-dir={root / 'chromium'}",
                f"--window-size={width},{height}",
                "--virtual-time-budget=5000",
                f"--screenshot={out}",
                f"http://127.0.0.1:{port}/",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        print(f"{out}: the board after the fair at scale {scale} (GMV {oracle.gmv_vnd:,} VND)")
    finally:
        worker.terminate()
        worker.wait(60)
        keys = list(client.scan_iter(f"{settings.redis_prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/board.png"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    screenshot(args.out, args.scale, args.seed, args.width, args.height)


if __name__ == "__main__":
    main()
