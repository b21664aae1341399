"""A real Prometheus scrapes a real worker during a scaled replay; every shipped PromQL expression is evaluated.

The shipped ``deploy/prometheus/prometheus.yml`` and rule files are used as they are, except the scrape target
(the worker's port) and the Alertmanager address, which are rewritten into a temporary copy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.monitoring_expressions import PROMETHEUS_DIR, all_promql_expressions
from tests.support import Pipeline, free_port, parse_metrics, wait_until

CAMPAIGN = "ocop-bac-giang-2023"


@pytest.fixture
def prometheus(tmp_path: Path) -> tuple[Path, int]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: `make test` installs Debian's prometheus package"
    config_dir = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, config_dir)
    return config_dir, free_port()


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.slow
def test_prometheus_scrapes_the_worker_and_every_expression_evaluates(
    pipeline: Pipeline, prometheus: tuple[Path, int]
) -> None:
    config_dir, port = prometheus
    pipeline.start_worker()
    worker_port = pipeline.ports[-1]
    config = (config_dir / "prometheus.yml").read_text()
    config = config.replace("127.0.0.1:6066", f"127.0.0.1:{worker_port}").replace("127.0.0.1:9093", "127.0.0.1:1")
    (config_dir / "prometheus.yml").write_text(config)
    server = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={config_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(config_dir / "prometheus.log").open("w"),
    )
    try:
        wait_until(lambda: _ready(port), 60, "Prometheus to be ready")
        result = pipeline.replay(scale=0.02, seed=3, batch=50, speed=285 * 60 / 20)
        summary = result.oracle.summary()
        pipeline.wait_redis_summary(CAMPAIGN, summary)
        text = pipeline.metrics_text()
        served = parse_metrics(text)
        assert served["livestream_views_total"] == summary["views"]
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
        assert lint.returncode == 0, lint.stdout + lint.stderr

        # Prometheus has scraped the final values: the fair totals equal the oracle.
        def scraped(expr: str, value: int) -> bool:
            rows = query(port, expr)
            return bool(rows) and float(rows[0]["value"][1]) == value

        wait_until(lambda: scraped("sum(livestream_views_total)", summary["views"]), 60, "scraped views")
        assert scraped("sum(livestream_orders_paid_total)", summary["orders"])
        assert scraped("sum(livestream_gmv_vnd_total)", summary["gmv_vnd"])
        assert scraped("sum(livestream_livestreams)", summary["livestreams"])
        wait_until(lambda: scraped("fair:livestream_gmv_vnd:sum", summary["gmv_vnd"]), 60, "recording rule")

        # Every expression of the rules and dashboards evaluates without error; most return data.
        expressions = all_promql_expressions()
        assert len(expressions) > 50
        empty = [(source, expr) for source, expr in expressions if not query(port, expr)]
        allowed_empty = ("ALERTS", "Alert", "alert")
        unexplained = [(s, e) for s, e in empty if not any(word in s + e for word in allowed_empty)]
        assert len(unexplained) <= len(expressions) // 10, unexplained
    finally:
        server.terminate()
        server.wait(30)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        time.sleep(0.2)
        return False
