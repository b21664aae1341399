"""Every PromQL expression of the monitoring assets: Prometheus rules and Grafana dashboards.

``all_promql_expressions()`` returns ``(source, expr)`` pairs so that a test can check them offline
(``promtool check rules`` on a generated rule file) or evaluate each against a real Prometheus.

The rule files are read with a small line-based reader instead of a YAML library (none is a project dependency).
It understands what the rule files use: ``- record:``/``- alert:`` items whose keys are plain, quoted or block
(``|``, ``>``) scalars, and one level of ``labels:``/``annotations:``. Tests compare the number of rules it finds
with the count ``promtool check rules`` reports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = (PROMETHEUS_DIR / "rules" / "recording.yml", PROMETHEUS_DIR / "rules" / "alerts.yml")
RULE_TEST_DIR = PROMETHEUS_DIR / "tests"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"

# Values for the Grafana variables the dashboards use, so that their queries are plain PromQL.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "channel": ".+",
    "__range": "1h",
    "__rate_interval": "1m",
    "__interval": "15s",
}


@dataclass
class Rule:
    kind: str  # "record" or "alert"
    name: str
    group: str
    path: Path
    line: int
    fields: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def expr(self) -> str:
        return self.fields.get("expr", "")


_ITEM = re.compile(r"^(?P<indent>\s*)- (?P<kind>record|alert):\s*(?P<value>.*)$")
_GROUP = re.compile(r"^\s*- name:\s*(?P<value>.*)$")
_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*):(?:\s+(?P<value>.*))?$")
_BLOCK = re.compile(r"^[|>][-+]?$")


def _scalar(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1].replace("''", "'")
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return str(json.loads(raw))
    return re.sub(r"\s+#.*$", "", raw)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: list[str], start: int, key_indent: int, style: str) -> tuple[str, int]:
    """The block scalar whose lines follow ``start``; returns it and the index of the first line after it."""
    body: list[str] = []
    i = start
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > key_indent):
        body.append(lines[i])
        i += 1
    while body and not body[-1].strip():
        body.pop()
    width = min((_indent(b) for b in body if b.strip()), default=0)
    text = [b[width:] for b in body]
    joined = "\n".join(text) if style.startswith("|") else " ".join(t.strip() for t in text if t.strip())
    return joined, i


def parse_rule_file(path: Path) -> list[Rule]:
    lines = path.read_text(encoding="utf-8").splitlines()
    rules: list[Rule] = []
    group = ""
    rule: Rule | None = None
    key_indent = 0
    section: dict[str, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        item = _ITEM.match(line)
        if item:
            rule = Rule(item["kind"], _scalar(item["value"]), group, path, i + 1)
            rules.append(rule)
            key_indent = len(item["indent"]) + 2
            section = None
            i += 1
            continue
        group_match = _GROUP.match(line)
        if group_match and (rule is None or _indent(line) < key_indent):
            group, rule, section = _scalar(group_match["value"]), None, None
            i += 1
            continue
        key = _KEY.match(line)
        if rule is None or key is None or _indent(line) < key_indent:
            if rule is not None and _indent(line) < key_indent:
                rule, section = None, None
            i += 1
            continue
        value = key["value"] or ""
        if _indent(line) == key_indent:
            target = rule.fields
            section = {"labels": rule.labels, "annotations": rule.annotations}.get(key["key"])
            if section is not None:
                i += 1
                continue
        elif section is not None and _indent(line) == key_indent + 2:
            target = section
        else:
            i += 1
            continue
        if _BLOCK.match(value.strip()):
            text, i = _block(lines, i + 1, _indent(line), value.strip())
            target[key["key"]] = text
        else:
            target[key["key"]] = _scalar(value)
            i += 1
    return rules


def all_rules() -> list[Rule]:
    return [rule for path in RULE_FILES for rule in parse_rule_file(path)]


def recording_rule_names() -> set[str]:
    return {rule.name for rule in all_rules() if rule.kind == "record"}


def alert_rules() -> list[Rule]:
    return [rule for rule in all_rules() if rule.kind == "alert"]


def rule_expressions() -> list[tuple[str, str]]:
    out = []
    for rule in all_rules():
        source = f"{rule.path.relative_to(ROOT)}:{rule.line} {rule.kind} {rule.name}"
        out.append((source, rule.expr))
    return out


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def _is_prometheus(datasource: Any) -> bool:
    if isinstance(datasource, dict):
        return datasource.get("type") == "prometheus"
    return datasource is None or "prom" in str(datasource).lower()


def _variable_query(variable: dict[str, Any]) -> str | None:
    """The PromQL a query variable sends: ``label_values(m, label)`` selects the series ``m``."""
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query", "")
    query = str(query or variable.get("definition", "")).strip()
    if match := re.fullmatch(r"label_values\((?P<selector>.+),\s*\w+\s*\)", query, re.S):
        return match["selector"].strip()
    if match := re.fullmatch(r"query_result\((?P<expr>.+)\)", query, re.S):
        return match["expr"].strip()
    if re.fullmatch(r"(label_values\(\s*\w+\s*\)|label_names\(.*\)|metrics\(.*\))", query, re.S):
        return None  # label or metric name lists: no PromQL
    return query or None


def dashboard_raw_expressions(path: Path) -> list[tuple[str, str]]:
    """``(source, expr)`` of one dashboard, Grafana variables not yet substituted."""
    board = load_dashboard(path)
    out: list[tuple[str, str]] = []
    for panel in iter_panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if _is_prometheus(target.get("datasource", panel.get("datasource"))) and target.get("expr"):
                source = f"{path.name} panel {panel.get('id')} {panel.get('title')!r} ref {target.get('refId')}"
                out.append((source, target["expr"]))
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query" and _is_prometheus(variable.get("datasource")):
            expr = _variable_query(variable)
            if expr:
                out.append((f"{path.name} variable {variable.get('name')}", expr))
    for annotation in board.get("annotations", {}).get("list", []):
        if _is_prometheus(annotation.get("datasource")) and annotation.get("expr"):
            out.append((f"{path.name} annotation {annotation.get('name')!r}", annotation["expr"]))
    return out


def substitute_variables(expr: str, variables: Mapping[str, str]) -> str:
    """Replace ``$name``, ``${name}``, ``${name:fmt}`` and ``[[name]]`` by their values."""

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in variables:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def dashboard_expressions(variables: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    values = {**DEFAULT_VARIABLES, **(variables or {})}
    return [
        (source, substitute_variables(expr, values))
        for path in dashboard_files()
        for source, expr in dashboard_raw_expressions(path)
    ]


def all_promql_expressions(variables: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(source, expr)`` for every rule and dashboard query; Grafana variables take ``variables`` or defaults."""
    return rule_expressions() + dashboard_expressions(variables)
