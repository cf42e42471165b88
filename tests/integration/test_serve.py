"""`aedr serve` as a real process against the real broker (Tansu) and the real Postgres."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    Produced,
    ServeLauncher,
    assert_nothing_lost_or_duplicated,
    delivery,
    make_corpus,
    produce,
    read_topic,
    record,
    wait_for,
)
from tests.integration.conftest import http_status as status
from worker.calibration import Calibration
from worker.cores import usable_cores
from worker.models import load_autoencoder
from worker.scoring import score_images
from worker.storage import SqlStore
from worker.zoo import zoo_model

MODELS = ["kl-f4c4", "vq-f4"]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }



def test_serve_end_to_end(broker, pg_url, tmp_path):
    corpus = make_corpus(MODELS, per_model=8, real=8, seed=1)
    n_valid, n_broken = len(corpus.images), len(corpus.broken)
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, MODELS)
    produce(broker.bootstrap, dep.topic, corpus)
    serve = dep.start()
    proc, port = serve.proc, serve.metrics_port
    store = SqlStore.from_url(pg_url)
    try:
        wait_for(lambda: store.count_events() == n_valid + n_broken, 180, "all events stored", diagnostics=dep.logs)
        wait_for(lambda: scrape(port).get(("aedr_events_total", (("outcome", "scored"),))) == n_valid, 30,
                 "metrics to count every event", diagnostics=dep.logs)
        events = {r["event_id"]: r for r in store.events()}
        rows = store.attributions()

        # Events: every valid one scored, every broken one failed with its reason.
        assert sum(r["status"] == "scored" for r in events.values()) == n_valid
        failed = [r for r in events.values() if r["status"] == "failed"]
        assert sorted(r["error"].split(":")[0] for r in failed) == sorted(corpus.broken.values())

        # Attributions: exactly the offline scores of the same pixels, against shipped thresholds.
        assert len(rows) == n_valid * len(MODELS)
        calibrations = {m: Calibration.load(zoo_model(m).calibration_path) for m in MODELS}
        thresholds = {m: c.threshold for m, c in calibrations.items()}
        for name in MODELS:
            model = load_autoencoder(str(zoo_model(name).path), name=name, device="cpu")
            mine = {r["event_id"]: r for r in rows if r["model"] == name}
            ids = sorted(mine)
            offline = score_images(model, [corpus.images[i] for i in ids])
            for event_id, want in zip(ids, offline):
                got = mine[event_id]
                # `score` is the calibration method's score; the paper's t' is ratio·H.
                assert got["score"] == pytest.approx(calibrations[name].scorer.score(want), rel=1e-3)
                assert got["ratio"] * got["homogeneity"] == pytest.approx(want.score, rel=1e-4)
                assert got["loss1"] == pytest.approx(want.loss1, rel=1e-4)
                assert got["threshold"] == thresholds[name]
                assert got["belongs"] == (got["score"] < thresholds[name])
        matched = {r["event_id"] for r in rows if r["belongs"]}
        assert matched, "the zoo's own images should match their models"
        for event_id in matched:
            best = min((r for r in rows if r["event_id"] == event_id and r["belongs"]),
                       key=lambda r: r["score"] / r["threshold"])
            assert events[event_id]["best_match"] == best["model"]

        # Alerts: one per matched event, with the matches and metadata passed through.
        alerts = [json.loads(r.value) for r in read_topic(broker.bootstrap, dep.alerts, len(matched))]
        assert Counter(a["event_id"] for a in alerts) == Counter(matched)
        for a in alerts:
            assert a["metadata"] == {"truth": corpus.truth[a["event_id"]]}
            assert {m["model"] for m in a["matches"]} == {r["model"] for r in rows if r["event_id"] == a["event_id"] and r["belongs"]}

        # Dead letters: original bytes and key, reason in the headers.
        dead = read_topic(broker.bootstrap, dep.dlq, n_broken)
        assert len(dead) == n_broken
        by_key = {d.key.decode(): d for d in dead}
        for key, reason in corpus.broken.items():
            headers = dict(by_key[key].headers)
            assert headers["aedr.reason"].decode() == reason
            assert by_key[key].value == corpus.values[corpus.keys.index(key.encode())]

        # Metrics over real HTTP.
        m = scrape(port)
        assert m[("aedr_events_total", (("outcome", "dead_lettered"),))] == n_broken
        for reason, count in Counter(corpus.broken.values()).items():
            assert m[("aedr_dlq_total", (("reason", reason),))] == count
        verdicts = sum(v for (name, _), v in m.items() if name == "aedr_verdicts_total")
        assert verdicts == n_valid * len(MODELS)
        matches = sum(v for (name, labels), v in m.items() if name == "aedr_verdicts_total" and ("verdict", "match") in labels)
        assert matches == len([r for r in rows if r["belongs"]])
        assert m[("aedr_batch_size_count", ())] >= (n_valid + n_broken) / dep.max_size
        assert m[("aedr_event_latency_seconds_count", ())] == n_valid + n_broken
        for stage in ("fetch", "decode", "score", "store"):
            assert m[("aedr_stage_seconds_count", (("stage", stage),))] > 0
        lags = [v for (name, _), v in m.items() if name == "aedr_consumer_lag"]
        assert lags and all(v == 0 for v in lags)
        assert status(port, "/healthz") == 200 and status(port, "/readyz") == 200
        assert {r["model"] for r in store.calibrations()} == set(MODELS)
        # On a CPU, one scorer per usable core, one torch thread each (ScoringSettings.layout).
        assert (m[("aedr_scorers", ())], m[("aedr_scoring_threads", ())]) == (min(usable_cores(), 8), 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        store.close()
    assert code == 0, dep.logs()


def test_kill9_then_restart_stores_every_event_exactly_once(broker, pg_url, tmp_path):
    corpus = make_corpus(MODELS, per_model=40, real=40, seed=2, with_broken=False)
    n = len(corpus.values)
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, MODELS, max_size=4)
    produce(broker.bootstrap, dep.topic, corpus)
    store = SqlStore.from_url(pg_url)
    try:
        first = dep.start().proc
        wait_for(lambda: store.count_events() >= 12, 120, "some events stored", diagnostics=dep.logs)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        stored_at_kill = store.count_events()
        assert stored_at_kill < n, "the worker finished before the kill; make the corpus larger"
        dep.start()
        wait_for(lambda: store.count_events() == n, 180, "all events after restart", diagnostics=dep.logs)
        events = store.events()
        rows = store.attributions()
        assert len({e["event_id"] for e in events}) == len(events) == n
        assert Counter(r["event_id"] for r in rows) == Counter({e: len(MODELS) for e in corpus.images})
    finally:
        dep.stop_all()
        store.close()


def test_second_worker_joining_and_leaving_loses_and_duplicates_nothing(broker, pg_url, tmp_path):
    """Waves of events: A alone; A and B after B joins (A's partitions revoked mid-stream);
    A alone again after B leaves (B's partitions revoked and handed back)."""
    corpus = make_corpus(MODELS, per_model=60, real=60, seed=3, with_broken=False)
    n = len(corpus.values)
    waves = [slice(0, n // 3), slice(n // 3, 2 * n // 3), slice(2 * n // 3, n)]
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, MODELS, max_size=4)
    store = SqlStore.from_url(pg_url)
    produced = Produced()
    try:
        produce(broker.bootstrap, dep.topic, corpus, waves[0], produced)
        dep.start()
        wait_for(lambda: store.count_events() >= 8, 120, "the first worker to score", diagnostics=dep.logs)
        second_serve = dep.start()
        second = second_serve.proc
        wait_for(lambda: re.search(r"assigned [1-9]", second_serve.log()), 120,
                 "the second worker to get partitions", diagnostics=dep.logs)
        produce(broker.bootstrap, dep.topic, corpus, waves[1], produced)
        wait_for(lambda: store.count_events() >= 2 * n // 3 - 10, 180, "the second wave, with two workers",
                 diagnostics=dep.logs)
        produce(broker.bootstrap, dep.topic, corpus, waves[2], produced)
        second.send_signal(signal.SIGTERM)  # leaves mid-stream: its partitions go back to the first
        assert second.wait(timeout=60) == 0, dep.logs()
        wait_for(lambda: store.count_events() == n, 180, "all events", diagnostics=dep.logs)
        rows = store.attributions()
        assert Counter(r["event_id"] for r in rows) == Counter({e: len(MODELS) for e in corpus.images})
        assert len(store.events()) == n
        figures = delivery(store, broker.bootstrap, dep, produced.positions, len(MODELS), produced.valid)
        assert_nothing_lost_or_duplicated(figures)
        record({"fault": "rebalance: a second worker joins, then leaves, mid-stream", "seed": 3, "trials": 1,
                "restarts": 0, **figures})
    finally:
        dep.stop_all()
        store.close()
