"""deploy/ checked offline: promtool on the Prometheus config and rules (with the rules' unit
tests), the Compose spec schema, every kustomize overlay rendered by `kubectl kustomize` and
checked against the Kubernetes schemas. promtool comes from Debian's
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


OVERLAYS = ("cpu", "gpu")
CORE_KINDS = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "CronJob"}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request, tmp_path_factory) -> tuple[str, dict[str, dict]]:
    """(overlay, {kind: object}) as `kubectl kustomize` renders the overlay."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.fail("kubectl not found (the client renders kustomizations offline)")
    result = run(kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / request.param))
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), kinds  # one of each
    return request.param, {o["kind"]: o for o in objects}


def test_every_overlay_builds_and_matches_the_schemas(rendered, tmp_path):
    overlay, objects = rendered
    assert set(objects) == CORE_KINDS | {"ServiceMonitor", "ScaledObject", "TriggerAuthentication"}
    files = []
    for kind in sorted(CORE_KINDS):
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(objects[kind]))
        files.append(str(path))
    result = run(str(BIN / "kubernetes-validate"), "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(CORE_KINDS)
    assert all(o["metadata"].get("namespace") == "aedr" for o in objects.values())


def test_the_deployment_fits_keda_the_probes_and_the_drain(rendered):
    overlay, objects = rendered
    deployment = objects["Deployment"]
    assert "replicas" not in deployment["spec"]  # KEDA owns the count
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # the loop drains within 30 s, then the producer flushes for up to 10 s (worker.service)
    assert pod["terminationGracePeriodSeconds"] >= 30 + 10 + 30
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert 1 <= container[probe]["timeoutSeconds"] < container[probe]["periodSeconds"]
    assert not any("value" in e and "postgresql" in str(e["value"]) for e in container["env"])
    gpu = overlay == "gpu"
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == gpu
    assert container["image"] == ("aedr:cuda" if gpu else "aedr:latest")
    assert objects["ServiceMonitor"]["metadata"]["labels"]["release"] == "prometheus"
    # On CPU nodes, one scorer per requested core (a node's other cores are not this pod's).
    env = {e["name"]: e for e in container["env"]}
    if gpu:
        assert "AEDR_SCORING__SCORERS" not in env and env["AEDR_SCORING__DEVICE"]["value"] == "cuda"
    else:
        assert env["AEDR_SCORING__SCORERS"]["valueFrom"]["resourceFieldRef"] == {"containerName": "worker",
                                                                                 "resource": "requests.cpu"}
        assert env["AEDR_SCORING__THREADS"]["value"] == "1"


def test_keda_authenticates_and_retention_runs(rendered, tmp_path):
    from worker.config import load_settings

    _, objects = rendered
    trigger = objects["ScaledObject"]["spec"]["triggers"][0]
    assert trigger["type"] == "kafka" and trigger["metadata"]["allowIdleConsumers"] == "false"
    assert trigger["authenticationRef"]["name"] == objects["TriggerAuthentication"]["metadata"]["name"]
    params = {r["parameter"] for r in objects["TriggerAuthentication"]["spec"]["secretTargetRef"]}
    assert {"sasl", "username", "password", "tls", "ca"} <= params
    job = objects["CronJob"]["spec"]
    assert job["concurrencyPolicy"] == "Forbid"
    args = job["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == ["db", "prune", "--older-than", "90d"]
    from worker.cli import build_parser

    parsed = build_parser().parse_args(args)
    assert parsed.db_command == "prune" and parsed.batch_size == 5000
    (tmp_path / "w.toml").write_text(objects["ConfigMap"]["data"]["worker.toml"])
    settings = load_settings(tmp_path / "w.toml", {})
    assert settings.watchlist[0].subfolder == "vae" and settings.logging.format == "json"


def test_an_overlay_inside_its_base_would_be_a_cycle():
    """The layout INFRA.md asks for: overlays beside the base, each pointing at ../../base."""
    k8s = DEPLOY / "k8s"
    assert not list((k8s / "base").glob("*/kustomization.yaml"))
    for overlay in OVERLAYS:
        assert yaml.safe_load((k8s / "overlays" / overlay / "kustomization.yaml").read_text())["resources"] == ["../../base"]
    base = yaml.safe_load((k8s / "base" / "kustomization.yaml").read_text())
    assert set(base["resources"]) == {p.name for p in (k8s / "base").glob("*.yaml")} - {"kustomization.yaml"}


def test_worker_config_for_compose_loads(tmp_path):
    from worker.config import load_settings

    settings = load_settings(DEPLOY / "worker.toml", {"AEDR_DATABASE__URL_FILE": "/run/secrets/database_url"})
    assert settings.kafka.bootstrap_servers == "kafka:9092" and len(settings.watchlist) == 2
    k8s_toml = yaml.safe_load((DEPLOY / "k8s" / "base" / "configmap.yaml").read_text())["data"]["worker.toml"]
    (tmp_path / "w.toml").write_text(k8s_toml)
    assert load_settings(tmp_path / "w.toml", {}).watchlist[0].subfolder == "vae"
