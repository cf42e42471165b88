"""deploy/ checked offline: promtool on the Prometheus config and rules (with the rules' unit
tests), the Compose spec schema, and the Kubernetes schemas. promtool comes from Debian's
`prometheus` package, which `make test` installs; its absence is a failure, not a skip."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BIN = Path(sys.executable).parent


def run(*cmd: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool not found: `make test` installs Debian's prometheus package")
    return path


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus/prometheus.yml"),
        ("check", "rules", "prometheus/alerts.yml"),
        ("test", "rules", "prometheus/alerts_test.yml"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(promtool, args):
    result = run(promtool, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_runbook_section_in_operations_doc():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    doc = (DEPLOY.parent / "docs" / "OPERATIONS.md").read_text()
    for rule in rules:
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {rule['alert']}" in doc and anchor == rule["alert"].lower()


def test_compose_file_matches_the_compose_spec():
    result = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"kafka", "postgres", "prometheus", "grafana", "worker"} <= set(compose["services"])
    for name, service in compose["services"].items():
        assert name == "migrate" or "healthcheck" in service, f"{name} has no healthcheck"
        env = json.dumps(service.get("environment", {})).lower()
        assert "password\": \"" not in env, f"{name} has a literal password"


def test_kubernetes_manifests_match_the_schemas():
    k8s = DEPLOY / "k8s"
    core = ["configmap.yaml", "deployment.yaml", "service.yaml", "pdb.yaml"]
    result = run(str(BIN / "kubernetes-validate"), "--strict", *core, cwd=k8s)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(core)
    # Custom resources (no schema shipped): check the fields that matter by hand.
    scaled = yaml.safe_load((k8s / "scaledobject.yaml").read_text())
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka" and trigger["metadata"]["allowIdleConsumers"] == "false"
    deployment = yaml.safe_load((k8s / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert not any("value" in e and "postgresql" in str(e["value"]) for e in container["env"])
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml"}


def test_worker_config_for_compose_loads(tmp_path):
    from worker.config import load_settings

    settings = load_settings(DEPLOY / "worker.toml", {"AEDR_DATABASE__URL_FILE": "/run/secrets/database_url"})
    assert settings.kafka.bootstrap_servers == "kafka:9092" and len(settings.watchlist) == 2
    k8s_toml = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())["data"]["worker.toml"]
    (tmp_path / "w.toml").write_text(k8s_toml)
    assert load_settings(tmp_path / "w.toml", {}).watchlist[0].subfolder == "vae"
