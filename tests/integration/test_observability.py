"""The dashboards and alert rules against a running worker, and a real Prometheus scraping it.

1. Every metric name in deploy/prometheus/alerts.yml and deploy/grafana/aedr.json is exported
   by a running `aedr serve` (scraped over HTTP, compared by name).
2. Prometheus (Debian's binary, on loopback) scrapes that worker; its HTTP API returns
   aedr_events_total with the right values, loads the alert rules healthy, and accepts every
   dashboard expression.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ServeLauncher, make_corpus, produce, wait_for
from worker.harness import postgres_database
from worker.kafka_io import free_port
from worker.storage import SqlStore

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMQL_NAME = re.compile(r"\b(aedr_[a-z0-9_]+)\b")


def alert_expressions() -> list[str]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "aedr.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def get_json(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


@pytest.fixture(scope="module")
def running_worker(broker, pg_server_url, tmp_path_factory):
    """One `aedr serve` that has processed a corpus with matches and dead letters."""
    with postgres_database(pg_server_url, "aedr_obs") as url:
        workdir = tmp_path_factory.mktemp("obs")
        corpus = make_corpus(["kl-f4c4", "vq-f4"], per_model=6, real=6, seed=7)
        dep = ServeLauncher(broker.bootstrap, url, workdir, ["kl-f4c4", "vq-f4"])
        produce(broker.bootstrap, dep.topic, corpus)
        serve = dep.start()
        store = SqlStore.from_url(url)
        wait_for(lambda: store.count_events() == len(corpus.values), 180, "events stored", diagnostics=dep.logs)
        store.close()
        yield serve.metrics_port, corpus
        assert serve.terminate(30) == 0, dep.logs()


def exported_names(port: int) -> set[str]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name for family in text_string_to_metric_families(body) for s in family.samples}


def test_rules_and_dashboard_name_only_exported_metrics(running_worker):
    port, _ = running_worker
    exported = exported_names(port)
    used = {name for expr in alert_expressions() + dashboard_expressions() for name in PROMQL_NAME.findall(expr)}
    assert len(used) >= 10
    assert used <= exported, f"not exported by the worker: {sorted(used - exported)}"


def test_metrics_pass_promtool_and_include_the_process_collector(running_worker):
    """`promtool check metrics` lints the live exposition (naming, units, help, types); the
    process collector's metrics are on the worker's own registry."""
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.fail("promtool not found: `make test` installs Debian's prometheus package")
    port, _ = running_worker
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples["process_resident_memory_bytes"] > 50e6  # torch and the models are loaded
    assert samples["process_cpu_seconds_total"] > 0 and "python_info" in samples


def test_real_prometheus_scrapes_the_worker(running_worker, tmp_path):
    binary = shutil.which("prometheus")
    if not binary:
        pytest.fail("prometheus not found: `make test` installs Debian's prometheus package")
    port, corpus = running_worker
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{"job_name": "aedr", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }))
    api_port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{api_port}"],
        stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{api_port}/api/v1"

    def query(expr: str) -> dict:
        return get_json(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))

    def scored() -> float | None:
        try:
            result = query('aedr_events_total{outcome="scored", job="aedr"}')["data"]["result"]
        except OSError:
            return None
        return float(result[0]["value"][1]) if result else None

    try:
        wait_for(lambda: scored() == len(corpus.images), 60, "Prometheus to scrape aedr_events_total",
                 diagnostics=lambda: (tmp_path / "prometheus.log").read_text()[-2000:])
        dead = query('aedr_events_total{outcome="dead_lettered"}')["data"]["result"]
        assert float(dead[0]["value"][1]) == len(corpus.broken)
        assert float(query('up{job="aedr"}')["data"]["result"][0]["value"][1]) == 1.0
        for expr in dashboard_expressions() + alert_expressions():
            answer = query(expr)
            assert answer["status"] == "success", (expr, answer)
        wait_for(lambda: all(r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok"
                             for g in get_json(f"{api}/rules")["data"]["groups"] for r in g["rules"]),
                 30, "alert rules evaluated")
        rules = [r for g in get_json(f"{api}/rules")["data"]["groups"] for r in g["rules"]]
        assert len(rules) == len(alert_expressions()) and all(r["health"] == "ok" for r in rules)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
