"""A watchlist that changes while the worker runs, on the real broker and Postgres: a model in
shadow mode, reloads (a good one and a bad one), a rescan of a time window with a new model, and
a `too_large` dead letter replayed after the limit is raised."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone

import numpy as np

from tests.integration.conftest import (
    Produced,
    ServeLauncher,
    delivery,
    http_status,
    make_corpus,
    produce,
    produce_values,
    read_topic,
    wait_for,
)
from worker.corpus import upload_event
from worker.harness import REPO, worker_toml, zoo_models
from worker.storage import SqlStore


def metric(port: int, name: str, **labels: str) -> float | None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def ready(port: int) -> bool:
    try:
        return http_status(port, "/readyz") == 200
    except OSError:
        return False


def rewrite(dep: ServeLauncher, port: int, models: list[tuple[str, str, str, str]]) -> None:
    """The running worker's config file with another watchlist: (name, model, calibration, mode)."""
    text = worker_toml(bootstrap=dep.bootstrap, topic=dep.topic, metrics_port=port,
                       models=[m[:3] for m in models], max_size=dep.max_size, sections=dep.sections)
    for name, *_, mode in models:  # worker_toml writes no mode: add it after each name line
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nmode = "{mode}"\n', 1)
    (dep.workdir / f"worker-{port}.toml").write_text(text)


def aedr(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_shadow_reload_rescan_and_replay(broker, pg_url, tmp_path):
    kl, vq, tiny, f8 = zoo_models(["kl-f4c4", "vq-f4", "tiny-f8", "kl-f8c4"])
    limit = {"images": {"max_bytes": 65536}}  # the zoo's 64² PNGs fit; a 256² photo of noise does not
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, ["kl-f4c4"], max_size=8, sections=limit)
    store = SqlStore.from_url(pg_url)
    produced = Produced()
    env = {"AEDR_DATABASE__URL": pg_url}
    try:
        # 1. kl-f4c4 alerts, vq-f4 in shadow
        serve = dep.start()
        port = serve.metrics_port
        wait_for(lambda: ready(port), 180, "the worker to be ready", diagnostics=dep.logs)  # SIGHUP before
        # Python has started would end the process: the handler is not there yet
        rewrite(dep, port, [(*kl, "alert"), (*vq, "shadow")])
        serve.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in serve.log(), 120, "the first reload", diagnostics=dep.logs)
        wave1 = make_corpus(["kl-f4c4", "vq-f4"], per_model=6, real=4, seed=61, with_broken=False)
        produce(broker.bootstrap, dep.topic, wave1, produced=produced)
        wait_for(lambda: store.count_events() == len(wave1.values), 180, "wave 1", diagnostics=dep.logs)
        rows = store.attributions()
        shadow = [r for r in rows if r["model"] == "vq-f4"]
        assert len(shadow) == len(wave1.values) and {r["mode"] for r in shadow} == {"shadow"}
        assert any(r["belongs"] for r in shadow), "the shadow model should match its own images"
        assert all(e["best_match"] != "vq-f4" for e in store.events())
        alerts = [json.loads(a.value) for a in read_topic(broker.bootstrap, dep.alerts,
                                                          sum(1 for e in store.events() if e["best_match"]), 60)]
        assert alerts and all(m["model"] == "kl-f4c4" for a in alerts for m in a["matches"])
        assert metric(port, "aedr_verdicts_total", model="vq-f4", mode="shadow", verdict="match") > 0

        # 2. a reload with a calibration fitted on other weights: refused, the old watchlist scores on
        rewrite(dep, port, [(*kl, "alert"), (tiny[0], tiny[1], kl[2], "alert")])
        serve.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(port, "aedr_reloads_total", outcome="failed") == 1, 120, "a failed reload",
                 diagnostics=dep.logs)
        assert "reload failed, the watchlist stays as it was" in serve.log()

        # 3. a reload (by the file alone) that adds tiny-f8 mid-stream: every later event has its row
        rewrite(dep, port, [(*kl, "alert"), (*vq, "shadow"), (*tiny, "alert")])
        wait_for(lambda: metric(port, "aedr_reloads_total", outcome="ok") == 2, 60, "the file-change reload",
                 diagnostics=dep.logs)
        wave2 = make_corpus(["tiny-f8", "kl-f8c4"], per_model=6, real=4, seed=62, with_broken=False)
        between = datetime.now(timezone.utc)
        produce(broker.bootstrap, dep.topic, wave2, produced=produced)
        n = len(wave1.values) + len(wave2.values)
        wait_for(lambda: store.count_events() == n, 180, "wave 2", diagnostics=dep.logs)
        until = datetime.now(timezone.utc)
        models_of = Counter(r["event_id"] for r in store.attributions() if r["model"] == "tiny-f8")
        assert set(models_of) >= {e.event_id for e in wave2.events} and set(models_of.values()) == {1}

        # 4. a too_large dead letter (over the 64 KiB limit)
        big = upload_event("big-1", np.random.default_rng(0).integers(0, 256, (256, 256, 3), "uint8"))
        produced.positions += produce_values(broker.bootstrap, dep.topic, [big], [b"big-1"])
        wait_for(lambda: store.count_events() == n + 1, 120, "the big event", diagnostics=dep.logs)
        assert {e["event_id"]: e for e in store.events()}["big-1"]["status"] == "failed"
        assert dep.stop_all() == [0]
        figures = delivery(store, broker.bootstrap, dep, produced.positions, 0)
        assert figures["lost"] == 0 and figures["duplicated"] == 0

        # 5. a rescan of wave 2's window with kl-f8c4, newly on the watchlist in alert mode
        rescan_config = tmp_path / "rescan.toml"
        rescan_config.write_text(worker_toml(bootstrap=dep.bootstrap, topic=dep.topic, metrics_port=0,
                                             models=[kl, vq, tiny, f8], max_size=8, sections=limit))
        out = aedr("rescan", "--config", str(rescan_config), "--model", "kl-f8c4", "--since", between.isoformat(),
                   "--until", until.isoformat(), env=env)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        f8_rows = {r["event_id"] for r in store.attributions() if r["model"] == "kl-f8c4"}
        assert f8_rows == {e.event_id for e in wave2.events} and report["events"] == len(wave2.values)
        events = {e["event_id"]: e for e in store.events()}
        for e in wave2.events:  # best_match settled from all current verdicts, alerting models only
            current = [r for r in store.attributions() if r["event_id"] == e.event_id and r["mode"] == "alert"
                       and r["belongs"]]
            want = min(current, key=lambda r: r["score"] / r["threshold"])["model"] if current else None
            assert events[e.event_id]["best_match"] == want
        published = [json.loads(a.value) for a in read_topic(broker.bootstrap, dep.alerts, 1, 30)]
        new_alerts = [a for a in published if a["rescan"]]
        assert len(new_alerts) == report["alerts"] and report["alerts"] > 0
        assert all(any(m["model"] == "kl-f8c4" for m in a["matches"]) for a in new_alerts)
        assert len({a["event_id"] for a in new_alerts}) == len(new_alerts)  # each once
        again = aedr("rescan", "--config", str(rescan_config), "--model", "kl-f8c4", "--since", between.isoformat(),
                     "--until", until.isoformat(), env=env)
        assert again.returncode == 0 and json.loads(again.stdout)["alerts"] == 0  # nothing new to alert

        # 6. the limit raised, the dead letter replayed: its event ends scored; a second replay changes nothing
        dep.sections = {"images": {"max_bytes": 1 << 20}}
        rescan_config.write_text(rescan_config.read_text().replace("max_bytes = 65536", f"max_bytes = {1 << 20}"))
        dep.start()
        replay = aedr("dlq", "replay", "--config", str(rescan_config), "--reason", "too_large", env=env)
        assert replay.returncode == 0, replay.stderr
        assert json.loads(replay.stdout)["replayed"] == 1
        wait_for(lambda: {e["event_id"]: e for e in store.events()}["big-1"]["status"] == "scored", 120,
                 "the replayed event to score", diagnostics=dep.logs)
        row = {e["event_id"]: e for e in store.events()}["big-1"]
        assert row["error"] is None
        verdicts = [r for r in store.attributions() if r["event_id"] == "big-1"]
        matching = [r for r in verdicts if r["belongs"] and r["mode"] == "alert"]
        assert row["best_match"] == (min(matching, key=lambda r: r["score"] / r["threshold"])["model"]
                                     if matching else None)
        second = aedr("dlq", "replay", "--config", str(rescan_config), "--reason", "too_large", env=env)
        assert json.loads(second.stdout)["replayed"] == 0 and json.loads(second.stdout)["already_replayed"] == 1
        time.sleep(3)
        assert len(read_topic(broker.bootstrap, dep.dlq, 1, 20)) == 1  # still the one dead letter
    finally:
        dep.stop_all()
        store.close()
