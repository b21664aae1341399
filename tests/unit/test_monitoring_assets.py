"""Monitoring assets: Prometheus config, rules and rule unit tests (promtool), Alertmanager example, Grafana dashboards.

No services: promtool (Debian's ``prometheus`` package, installed by deploy/local/test-deps.sh) checks the config and
rules and runs the rule unit tests; every dashboard query is parsed by promtool too. Metric names used anywhere in
the assets must be served by agents/metrics.py (read as source text), be recording rules, or be the planned
consumer-lag gauge, so a renamed metric fails here instead of leaving an empty panel.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.monitoring_expressions import (
    DASHBOARD_DIR,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    ROOT,
    RULE_FILES,
    RULE_TEST_DIR,
    alert_rules,
    all_promql_expressions,
    dashboard_expressions,
    dashboard_files,
    dashboard_raw_expressions,
    iter_panels,
    load_dashboard,
    parse_rule_file,
    recording_rule_names,
)

METRICS_SOURCE = ROOT / "agents" / "metrics.py"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = PROMETHEUS_DIR / "alertmanager.yml"
DATASOURCE_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "livestream.yml"
README = PROMETHEUS_DIR / "README.md"

# Served by the workers once consumer lag is exported (see deploy/prometheus/README.md).
PLANNED_METRICS: set[str] = set()  # metrics rules may use before a worker serves them
JOB = "livestream-worker"
EXPECTED_ALERTS = {
    "LivestreamFairNoOrders",
    "LivestreamFairViewerDrop",
    "LivestreamPaymentTrouble",
    "LivestreamStreamDown",
    "LivestreamOperatorAlertActive",
    "LivestreamWorkerDown",
    "LivestreamNoThroughput",
    "LivestreamConsumerLagGrowing",
    "LivestreamDeadLettersHigh",
    "LivestreamLateEventsHigh",
    "LivestreamRedisErrors",
    "LivestreamPartitionStalled",
    "LivestreamPartitionUnowned",
    "LivestreamGatewayErrors",
}
SEVERITIES = {"page", "ticket"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: install Debian's 'prometheus' package (deploy/local/test-deps.sh does it, "
            "or: apt-get install -y prometheus). The monitoring asset tests need it and do not skip.",
            pytrace=False,
        )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


# --- Prometheus ------------------------------------------------------------------------------------------------------


def test_prometheus_config_is_valid(promtool: str) -> None:
    result = run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, output(result)
    assert "2 rule files found" in result.stdout, output(result)


def test_prometheus_config_scrapes_the_workers() -> None:
    text = PROMETHEUS_CONFIG.read_text(encoding="utf-8")
    assert re.search(rf"job_name:\s*{JOB}\b", text)
    assert re.search(r"scrape_interval:\s*5s", text)
    assert '"127.0.0.1:6066"' in text
    assert '"127.0.0.1:9093"' in text
    for rule_file in RULE_FILES:
        assert f"- rules/{rule_file.name}" in text


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_rule_file_is_valid(promtool: str, rule_file: Path) -> None:
    result = run(promtool, "check", "rules", str(rule_file))
    assert result.returncode == 0, output(result)
    found = re.search(r"SUCCESS: (\d+) rules found", result.stdout)
    assert found, output(result)
    # The line-based reader of tests/monitoring_expressions.py sees every rule promtool sees.
    assert len(parse_rule_file(rule_file)) == int(found.group(1))


def test_rule_unit_tests_pass(promtool: str) -> None:
    test_files = sorted(RULE_TEST_DIR.glob("*.yml"))
    assert test_files, f"no promtool rule tests in {RULE_TEST_DIR}"
    result = run(promtool, "test", "rules", *map(str, test_files))
    assert result.returncode == 0, output(result)
    assert result.stdout.count("SUCCESS") == len(test_files), output(result)


def test_expected_alerts_exist_with_severity_and_annotations() -> None:
    alerts = alert_rules()
    assert {a.name for a in alerts} == EXPECTED_ALERTS
    assert len(alerts) == len(EXPECTED_ALERTS), "an alert name is defined twice"
    for alert in alerts:
        assert alert.labels.get("severity") in SEVERITIES, alert.name
        assert re.fullmatch(r"\d+[smh]", alert.fields.get("for", "")), f"{alert.name}: no 'for' duration"
        for key in ("summary", "description", "runbook"):
            assert alert.annotations.get(key, "").strip(), f"{alert.name}: no {key} annotation"


def _alert_test_cases() -> dict[str, set[bool]]:
    """alertname -> {True if a test expects it firing, False if a test expects no alert}."""
    cases: dict[str, set[bool]] = {}
    for path in RULE_TEST_DIR.glob("*.yml"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:[ \t]*(\[\])?", text):
            cases.setdefault(match.group(1), set()).add(match.group(2) is None)
    return cases


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = _alert_test_cases()
    for name in EXPECTED_ALERTS:
        assert cases.get(name) == {True, False}, f"{name}: tests cover firing/not firing = {cases.get(name)}"


def test_key_recording_rules_are_unit_tested() -> None:
    text = (RULE_TEST_DIR / "recording_rules_test.yml").read_text(encoding="utf-8")
    tested = set(re.findall(r"expr:.*?([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)", text))
    key_rules = {
        "fair:livestream_views:sum",
        "fair:livestream_views:rate1m",
        "fair:livestream_views:rate5m",
        "fair:livestream_gmv_vnd:sum",
        "fair:livestream_orders_paid:sum",
        "fair:livestream_orders_paid:rate5m",
        "fair:livestream_concurrent_viewers:sum",
        "fair:livestream_conversion:ratio",
        "fair:livestream_gpm_vnd:ratio",
        "fair:livestream_average_order_value_vnd:ratio",
        "fair:livestream_orders_cancelled_refunded:ratio_rate5m",
        "channel:livestream_channel_gmv_vnd:max",
        "job:livestream_events_processed:rate1m",
        "reason:livestream_dlq_records:rate1m",
        "job:livestream_late_events:ratio_rate5m",
        "topic:livestream_consumer_lag_records:sum",
    }
    assert key_rules <= recording_rule_names()
    assert not key_rules - tested, f"not unit tested: {sorted(key_rules - tested)}"


def test_recording_rules_follow_the_naming_convention() -> None:
    names = recording_rule_names()
    assert names
    for name in names:
        match = re.fullmatch(r"(?P<level>[a-z_]+):(?P<metric>[a-z0-9_]+):(?P<ops>[a-z0-9_]+)", name)
        assert match, f"{name} is not level:metric:operations"
        assert match["metric"].startswith("livestream_"), name
        assert not match["metric"].endswith("_total"), f"{name}: drop _total in a recorded rate or sum"


# --- Alertmanager ----------------------------------------------------------------------------------------------------


def test_alertmanager_config_routes_and_inhibits() -> None:
    text = ALERTMANAGER_CONFIG.read_text(encoding="utf-8")
    assert re.search(r"group_by:\s*\[alertname, channel\]", text)
    assert 'severity="page"' in text and 'severity="ticket"' in text
    inhibit = re.search(
        r"source_matchers:\s*\['alertname=\"LivestreamWorkerDown\"'\]\s*\n\s*"
        r"target_matchers:\s*\['alertname=\"LivestreamNoThroughput\"'\]",
        text,
    )
    assert inhibit, "LivestreamWorkerDown must inhibit LivestreamNoThroughput"
    assert re.search(r"url:\s*http://127\.0\.0\.1:\d+/", text)


def test_alertmanager_config_is_valid() -> None:
    amtool = shutil.which("amtool")
    assert amtool is not None, (
        "amtool not installed: deploy/local/test-deps.sh installs it (Debian's prometheus-alertmanager). "
        "This test does not skip."
    )
    result = run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, output(result)
    for labels, receiver in (("severity=page", "page"), ("severity=ticket", "ticket"), ("severity=other", "ticket")):
        routed = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", labels)
        assert routed.stdout.strip() == receiver, output(routed)


# --- Grafana ---------------------------------------------------------------------------------------------------------


def _datasource_uid() -> str:
    match = re.search(r"^\s*uid:\s*(\S+)", DATASOURCE_FILE.read_text(encoding="utf-8"), re.M)
    assert match, f"no datasource uid in {DATASOURCE_FILE}"
    return match.group(1)


def test_grafana_provisioning() -> None:
    datasource = DATASOURCE_FILE.read_text(encoding="utf-8")
    assert re.search(r"type:\s*prometheus", datasource)
    assert re.search(r"url:\s*http://", datasource)
    provider = DASHBOARD_PROVIDER_FILE.read_text(encoding="utf-8")
    assert re.search(r"type:\s*file", provider)
    assert re.search(r"path:\s*/\S+", provider)


def test_the_three_dashboards_exist() -> None:
    names = {p.name for p in dashboard_files()}
    assert names == {"fair-overview.json", "livestream-detail.json", "pipeline-health.json"}


def _panel_units(panel: dict[str, Any]) -> set[str]:
    field_config = panel.get("fieldConfig", {})
    units = {field_config.get("defaults", {}).get("unit", "")}
    for override in field_config.get("overrides", []):
        units |= {p["value"] for p in override.get("properties", []) if p.get("id") == "unit"}
    return units - {""}


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    board = load_dashboard(path)
    assert re.fullmatch(r"[a-z0-9-]{1,40}", board.get("uid", "")), "uid"
    assert board.get("title")
    assert 36 <= board.get("schemaVersion", 0) <= 41
    assert board.get("refresh") in {"5s", "10s"}
    assert "livestream" in board.get("tags", [])
    uids = [board["uid"] for board in map(load_dashboard, dashboard_files())]
    assert len(set(uids)) == len(uids), "dashboard uids must be unique"

    datasource_uid = _datasource_uid()
    panels = list(iter_panels(board["panels"]))
    assert len([p for p in panels if p.get("type") != "row"]) >= 6
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel.get("title"), panel
        targets = panel.get("targets", [])
        assert targets, f"{panel['title']}: no targets"
        assert len({t["refId"] for t in targets}) == len(targets), f"{panel['title']}: duplicate refId"
        for t in targets:
            assert t.get("expr", "").strip(), f"{panel['title']} {t.get('refId')}: empty expr"
            assert t.get("datasource", panel.get("datasource", {})).get("uid") == datasource_uid, panel["title"]
        units = _panel_units(panel)
        if panel["type"] != "table":
            assert units, f"{panel['title']}: no unit"
        money = any("_vnd" in t["expr"] and not t["expr"].startswith("count(") for t in targets)
        if money and "percentunit" not in units:
            assert any("₫" in unit for unit in units), f"{panel['title']}: money without a VND unit ({units})"


def _dashboard_exprs(name: str) -> str:
    return "\n".join(expr for _, expr in dashboard_raw_expressions(DASHBOARD_DIR / name))


def test_fair_overview_covers_the_fair() -> None:
    exprs = _dashboard_exprs("fair-overview.json")
    for needed in (
        "fair:livestream_gmv_vnd:sum",
        "fair:livestream_gmv_vnd:rate1m",
        "fair:livestream_orders_paid:sum",
        "fair:livestream_orders_placed:rate1m",
        "fair:livestream_views:sum",
        "fair:livestream_concurrent_viewers:sum",
        "fair:livestream_conversion:ratio",
        "fair:livestream_gpm_vnd:ratio",
        "topk(10, channel:livestream_channel_gmv_vnd:max",
        "ALERTS{",
    ):
        assert needed in exprs, needed


def test_livestream_detail_is_templated_by_channel() -> None:
    board = load_dashboard(DASHBOARD_DIR / "livestream-detail.json")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    channel = variables["channel"]
    assert channel["type"] == "query"
    query = channel["query"]["query"] if isinstance(channel["query"], dict) else channel["query"]
    assert query == "label_values(livestream_channel_gmv_vnd, channel)"
    exprs = _dashboard_exprs("livestream-detail.json")
    assert exprs.count('channel=~"$channel"') >= 10


def test_pipeline_health_covers_the_pipeline() -> None:
    exprs = _dashboard_exprs("pipeline-health.json")
    for needed in (
        "job:livestream_records_processed:rate1m",
        "job:livestream_events_processed:rate1m",
        "topic:livestream_consumer_lag_records:sum",
        "reason:livestream_dlq_records:rate1m",
        "job:livestream_late_events:rate1m",
        "job:livestream_redelivered_records:rate1m",
        "instance:livestream_redis_errors:rate1m",
        "instance:livestream_redis_flushes:rate1m",
        f'up{{job="{JOB}"}}',
        "livestream_partition_stalled",
        "livestream_partition_owned",
        "livestream_partition_last_progress_timestamp_seconds",
        "livestream_worker_ready",
    ):
        assert needed in exprs, needed


def test_pipeline_health_lists_every_pipeline_alert() -> None:
    """The dashboard's alert annotation and alert table name every alert of the pipeline group."""
    pipeline_alerts = {a.name for a in alert_rules() if a.group == "livestream-pipeline-alerts"}
    assert {"LivestreamPartitionStalled", "LivestreamPartitionUnowned"} <= pipeline_alerts
    alert_queries = [e for _, e in dashboard_raw_expressions(DASHBOARD_DIR / "pipeline-health.json") if "ALERTS{" in e]
    assert len(alert_queries) >= 2
    for expr in alert_queries:
        match = re.search(r'alertname=~"([^"]+)"', expr)
        assert match, expr
        assert set(match[1].split("|")) == pipeline_alerts, expr


# --- Every expression ------------------------------------------------------------------------------------------------


def test_all_promql_expressions_lists_rules_and_dashboards() -> None:
    expressions = all_promql_expressions()
    sources = [source for source, _ in expressions]
    assert len(set(sources)) == len(sources), "sources must be unique"
    rule_count = sum(len(parse_rule_file(p)) for p in RULE_FILES)
    dashboard_count = sum(len(dashboard_raw_expressions(p)) for p in dashboard_files())
    assert len(expressions) == rule_count + dashboard_count
    for source, expr in expressions:
        assert expr.strip(), source
        assert "$" not in expr and "[[" not in expr, f"{source}: unsubstituted Grafana variable in {expr!r}"
    assert any('channel=~"ocop-live-01"' in e for _, e in dashboard_expressions({"channel": "ocop-live-01"}))


def _promtool_check_expressions(promtool: str, tmp_path: Path, expressions: list[tuple[str, str]]) -> str:
    rules = [{"record": f"monitoring_check_expr_{i}", "expr": expr} for i, (_, expr) in enumerate(expressions)]
    rule_file = tmp_path / f"expressions_{len(list(tmp_path.iterdir()))}.yml"
    rule_file.write_text(json.dumps({"groups": [{"name": "expressions", "rules": rules}]}), encoding="utf-8")
    result = run(promtool, "check", "rules", str(rule_file))
    return "" if result.returncode == 0 else output(result)


def test_every_expression_parses(promtool: str, tmp_path: Path) -> None:
    """promtool parses every rule and dashboard query (written as recording rules of a scratch rule file)."""
    expressions = all_promql_expressions()
    if _promtool_check_expressions(promtool, tmp_path, expressions):
        bad = [(s, e) for s, e in expressions if _promtool_check_expressions(promtool, tmp_path, [(s, e)])]
        pytest.fail("invalid PromQL:\n" + "\n".join(f"{s}: {e}" for s, e in bad))


# --- Metric names ----------------------------------------------------------------------------------------------------


def _module_tuples(tree: ast.Module) -> dict[str, tuple[str, ...]]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
                for target in targets:
                    if isinstance(target, ast.Name):
                        out[target.id] = value
    return out


def served_metric_names() -> set[str]:
    """Exposition names served by agents/metrics.py, read from its source text (not imported).

    Literal ``"livestream_..."`` names are counters (``_total`` appended on exposition) unless they are the name of
    a ``GaugeMetricFamily``; f-string names like ``f"livestream_channel_{name}"`` are expanded over the module-level
    tuple their comprehension iterates.
    """
    tree = ast.parse(METRICS_SOURCE.read_text(encoding="utf-8"))
    tuples = _module_tuples(tree)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    gauges: set[str] = set()
    literals: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"livestream_[a-z_]+", node.value)
            and not isinstance(parents.get(node), ast.JoinedStr)
        ):
            literals.add(node.value)
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if func != "GaugeMetricFamily":
            continue
        name = node.args[0]
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            gauges.add(name.value)
        elif isinstance(name, ast.JoinedStr):
            gauges |= _expand_template(name, parents, tuples)
    return gauges | {f"{name}_total" for name in literals - gauges}


def _expand_template(
    template: ast.JoinedStr, parents: dict[ast.AST, ast.AST], tuples: dict[str, tuple[str, ...]]
) -> set[str]:
    parts = template.values
    variables = [p.value.id for p in parts if isinstance(p, ast.FormattedValue) and isinstance(p.value, ast.Name)]
    assert len(variables) == 1, f"cannot read metric name template {ast.unparse(template)}"
    node: ast.AST | None = template
    while node is not None:
        if isinstance(node, ast.DictComp | ast.ListComp | ast.SetComp | ast.GeneratorExp):
            for gen in node.generators:
                iterates_variable = isinstance(gen.target, ast.Name) and gen.target.id == variables[0]
                if iterates_variable and isinstance(gen.iter, ast.Name):
                    values = tuples.get(gen.iter.id)
                    assert values, f"{gen.iter.id} is not a module-level tuple of strings"
                    return {
                        "".join(str(p.value) if isinstance(p, ast.Constant) else value for p in parts)
                        for value in values
                    }
        node = parents.get(node)
    raise AssertionError(f"cannot expand metric name template {ast.unparse(template)}")


def _referenced_metric_names() -> dict[str, set[str]]:
    """Names containing ``livestream_`` in the rules, rule tests and dashboards -> files using them."""
    files = [*RULE_FILES, *sorted(RULE_TEST_DIR.glob("*.yml")), *dashboard_files()]
    names: dict[str, set[str]] = {}
    for path in files:
        for token in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", path.read_text(encoding="utf-8")):
            if "livestream_" in token:
                names.setdefault(token, set()).add(path.name)
    return names


def test_served_metric_names_are_read_from_the_collector() -> None:
    served = served_metric_names()
    for name in (
        "livestream_views_total",
        "livestream_gmv_vnd_total",
        "livestream_concurrent_viewers",
        "livestream_unique_viewers",
        "livestream_channel_gmv_vnd",
        "livestream_channel_concurrent_viewers",
        "livestream_dlq_records_total",
        "livestream_redis_flushes_total",
        "livestream_partition_last_progress_timestamp_seconds",
        "livestream_partition_stalled",
        "livestream_partition_owned",
        "livestream_topic_partitions",
        "livestream_owned_partitions",
        "livestream_worker_ready",
        "livestream_fold_failed",
    ):
        assert name in served, name
    assert "livestream_concurrent_viewers_total" not in served
    assert "livestream_views" not in served


def gateway_metric_names() -> set[str]:
    """Exposition names of the ingestion gateway's metrics (livestream/gateway.py), from its registry."""
    from livestream.gateway import GatewayMetrics

    families = list(GatewayMetrics().registry.collect())
    names = {sample.name for family in families for sample in family.samples}
    return names | {f"{f.name}_total" if f.type == "counter" else f.name for f in families}


def test_gateway_is_scraped_alerted_and_on_the_pipeline_dashboard() -> None:
    config = PROMETHEUS_CONFIG.read_text(encoding="utf-8")
    assert re.search(r"job_name:\s*livestream-gateway\b", config)
    assert '"127.0.0.1:8080"' in config
    served = gateway_metric_names()
    assert {"livestream_gateway_requests_total", "livestream_gateway_request_duration_seconds_bucket"} <= served
    alert = next(a for a in alert_rules() if a.name == "LivestreamGatewayErrors")
    assert 'livestream_gateway_requests_total{code=~"5.."}' in alert.expr
    exprs = _dashboard_exprs("pipeline-health.json")
    assert 'livestream_gateway_requests_total{code=~"5.."}' in exprs
    assert "livestream_gateway_request_duration_seconds_bucket" in exprs


def test_every_metric_name_is_served_recorded_or_planned() -> None:
    served = served_metric_names() | gateway_metric_names()
    recorded = recording_rule_names()
    unknown = {}
    for name, files in _referenced_metric_names().items():
        known = name in recorded if ":" in name else name in served or name in PLANNED_METRICS
        if not known:
            unknown[name] = sorted(files)
    assert not unknown, f"not served by agents/metrics.py, not a recording rule, not planned: {unknown}"


def test_readme_documents_every_alert_and_the_planned_lag_metric() -> None:
    text = README.read_text(encoding="utf-8")
    for name in EXPECTED_ALERTS:
        assert name in text, name
    assert "livestream_consumer_lag_records" in text


def test_every_fair_figure_is_served_as_a_counter_and_an_owned_gauge() -> None:
    from agents.metrics import FAIR_COUNTERS, FAIR_FIELDS

    assert set(FAIR_FIELDS) == set(FAIR_COUNTERS)
    served = served_metric_names()
    for name in FAIR_FIELDS:
        assert {f"livestream_{name}_total", f"livestream_owned_{name}"} <= served, name
