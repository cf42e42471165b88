"""Fault injection against the real broker and Postgres, with `aedr serve` as real processes.

Each scenario fails if a single event is lost or stored twice. Random timing comes from a seed
that is printed (AEDR_FAULT_SEED to replay); AEDR_KILL_TRIALS and AEDR_OUTAGE_S set the size.
Figures go to $AEDR_RELIABILITY_REPORT when set (docs/RELIABILITY.md is made from them).
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request
from collections import Counter

from tests.integration.conftest import (
    http_status as status,
    Produced,
    ServeLauncher,
    assert_nothing_lost_or_duplicated,
    delivery,
    assert_committed_work_is_stored,
    make_corpus,
    produce,
    read_topic,
    record,
    wait_for,
)
from tests.integration.proxy import CuttableProxy
from worker.storage import SqlStore

MODELS = ["kl-f4c4", "vq-f4"]
SEED = int(os.environ.get("AEDR_FAULT_SEED", "20261128"))


def scrape(port: int) -> str:
    """The worker's /metrics text, or "" while it is not answering yet."""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return ""



def test_kill9_at_random_points(broker, pg_url, tmp_path):
    trials = int(os.environ.get("AEDR_KILL_TRIALS", "6"))
    rng = random.Random(SEED)
    print(f"kill -9 at random points: seed {SEED}, {trials} trials")
    corpus = make_corpus(MODELS, per_model=15 * trials, real=10 * trials, seed=SEED % 1000, with_broken=True)
    n = len(corpus.values)
    bounds = [round(i * n / trials) for i in range(trials + 1)]
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, MODELS, max_size=8)
    store = SqlStore.from_url(pg_url)
    kills_mid_processing = 0
    produced = Produced()
    try:
        for i in range(trials):
            produce(broker.bootstrap, dep.topic, corpus, slice(bounds[i], bounds[i + 1]), produced)
            proc = dep.start().proc
            before = store.count_events()
            wait_for(lambda: store.count_events() > before or proc.poll() is not None, 120,
                     f"trial {i}: processing to start", diagnostics=dep.logs)
            assert proc.poll() is None, dep.logs()
            time.sleep(rng.uniform(0.0, 0.8))
            proc.kill()
            proc.wait(timeout=10)
            kills_mid_processing += store.count_events() < bounds[i + 1]
            assert_committed_work_is_stored(store, broker.bootstrap, f"g-{dep.topic}", dep.topic)
        dep.start()
        wait_for(lambda: store.count_events() == n, 240, "every event after the last restart", diagnostics=dep.logs)
        figures = delivery(store, broker.bootstrap, dep, produced.positions, len(MODELS), produced.valid)
        assert_nothing_lost_or_duplicated(figures)
        matched = {r["event_id"] for r in store.attributions() if r["belongs"]}
        alerts = [json.loads(r.value)["event_id"] for r in read_topic(broker.bootstrap, dep.alerts, len(matched), 60)]
        assert set(alerts) == matched  # alerts may repeat (at least once), never for another event
        record({"fault": "kill -9 at random points", "seed": SEED, "trials": trials,
                "kills_mid_processing": kills_mid_processing, "restarts": trials + 1, **figures})
    finally:
        dep.stop_all()
        store.close()


def test_database_outage(broker, pg_url, tmp_path):
    outage_s = float(os.environ.get("AEDR_OUTAGE_S", "30"))
    proxy = CuttableProxy(("127.0.0.1", 5432)).start()
    via_proxy = pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    assert via_proxy != pg_url
    corpus = make_corpus(MODELS, per_model=60, real=40, seed=SEED % 1000 + 1, with_broken=True)
    n = len(corpus.values)
    dep = ServeLauncher(broker.bootstrap, via_proxy, tmp_path, MODELS, max_size=8)  # retries back off to 10 s
    store = SqlStore.from_url(pg_url)  # the test reads the database directly
    produced = Produced()
    produce(broker.bootstrap, dep.topic, corpus, produced=produced)
    serve = dep.start()
    proc, port = serve.proc, serve.metrics_port
    try:
        wait_for(lambda: store.count_events() >= 20, 120, "processing to start", diagnostics=dep.logs)
        proxy.cut()
        at_cut = store.count_events()
        started = time.monotonic()
        samples, not_ready = [], 0
        while time.monotonic() - started < outage_s:
            samples.append(store.count_events())
            not_ready += status(port, "/readyz") == 503
            assert proc.poll() is None, dep.logs()
            assert_committed_work_is_stored(store, broker.bootstrap, f"g-{dep.topic}", dep.topic)
            time.sleep(2)
        assert max(samples) <= at_cut + dep.max_size, "rows were stored while the database was cut"
        assert not_ready > 0, "/readyz stayed 200 while the database was unreachable"
        proxy.restore()
        wait_for(lambda: store.count_events() == n, 180, "recovery after the outage", diagnostics=dep.logs)
        assert proc.poll() is None  # recovered by itself: no restart
        errors = [line for line in scrape(port).splitlines() if line.startswith("aedr_store_errors_total ")]
        store_errors = float(errors[0].split()[1])
        assert store_errors > 0
        figures = delivery(store, broker.bootstrap, dep, produced.positions, len(MODELS), produced.valid)
        assert_nothing_lost_or_duplicated(figures)
        record({"fault": f"database unreachable {outage_s:.0f} s", "seed": SEED, "trials": 1, "restarts": 0,
                "stored_when_cut": at_cut, "store_retries": store_errors, **figures})
    finally:
        dep.stop_all()
        proxy.stop()
        store.close()


def test_broker_unreachable_mid_stream(pg_url, tmp_path):
    """What a worker sees of a broker restart: every connection dropped, the broker unreachable
    for a while, then back with its data. (A real restart of the test broker would lose its
    messages: Tansu here keeps them only in memory.) The broker listens on one port and
    advertises a proxy's, so all client traffic crosses the proxy that the test cuts."""
    from worker.kafka_io import LocalBroker, free_port

    down_s = float(os.environ.get("AEDR_BROKER_DOWN_S", "15"))
    proxy_port = free_port()
    with LocalBroker(log_path=tmp_path / "broker.log", advertised_port=proxy_port) as broker:
        proxy = CuttableProxy(("127.0.0.1", broker.port), port=proxy_port).start()
        bootstrap = f"127.0.0.1:{proxy_port}"
        corpus = make_corpus(MODELS, per_model=60, real=40, seed=SEED % 1000 + 2, with_broken=True)
        n = len(corpus.values)
        dep = ServeLauncher(bootstrap, pg_url, tmp_path, MODELS, max_size=8)
        store = SqlStore.from_url(pg_url)
        produced = Produced()
        produce(bootstrap, dep.topic, corpus, slice(0, n // 2), produced)
        proc = dep.start().proc
        try:
            wait_for(lambda: store.count_events() >= 20, 120, "processing to start", diagnostics=dep.logs)
            proxy.cut()
            at_cut = store.count_events()
            time.sleep(down_s)
            assert proc.poll() is None, dep.logs()
            proxy.restore()
            produce(bootstrap, dep.topic, corpus, slice(n // 2, n), produced)  # the stream goes on
            wait_for(lambda: store.count_events() == n, 240, "every event after the broker came back",
                     diagnostics=dep.logs)
            assert proc.poll() is None  # reconnected by itself
            assert_committed_work_is_stored(store, bootstrap, f"g-{dep.topic}", dep.topic)
            figures = delivery(store, bootstrap, dep, produced.positions, len(MODELS), produced.valid)
            assert_nothing_lost_or_duplicated(figures)
            record({"fault": f"broker unreachable {down_s:.0f} s (connections cut)", "seed": SEED, "trials": 1,
                    "restarts": 0, "stored_when_cut": at_cut, **figures})
        finally:
            dep.stop_all()
            proxy.stop()
            store.close()


def test_broker_process_restart(pg_url, tmp_path):
    """A real restart of the broker process. This Tansu keeps messages in memory only, so the
    restart is placed where that loses nothing: the worker has committed wave 1. The new broker
    starts empty; wave 2 is published to it (smaller per partition than wave 1, so the worker's
    old positions point past the new logs and it must reset). The worker reconnects, rejoins a
    group the new broker never saw, and stores every wave-2 event: no worker restart."""
    from worker.kafka_io import LocalBroker, free_port

    from tests.integration.conftest import produce_values

    port = free_port()
    first = LocalBroker(port=port, log_path=tmp_path / "broker-1.log").start()
    corpus = make_corpus(MODELS, per_model=40, real=40, seed=SEED % 1000 + 3, with_broken=False)
    n = len(corpus.values)
    wave1, wave2 = corpus.values[: n * 2 // 3], corpus.values[n * 2 // 3 :]
    dep = ServeLauncher(first.bootstrap, pg_url, tmp_path, MODELS, max_size=8)
    store = SqlStore.from_url(pg_url)
    second = None
    try:
        positions1 = produce_values(first.bootstrap, dep.topic, wave1)
        proc = dep.start().proc
        wait_for(lambda: store.count_events() == len(wave1), 180, "wave 1", diagnostics=dep.logs)
        assert_committed_work_is_stored(store, first.bootstrap, f"g-{dep.topic}", dep.topic)
        first.stop()
        time.sleep(3)
        second = LocalBroker(port=port, log_path=tmp_path / "broker-2.log").start()
        positions2 = produce_values(second.bootstrap, dep.topic, wave2)
        per1, per2 = Counter(p for p, _ in positions1), Counter(p for p, _ in positions2)
        assert all(per2[p] < per1[p] for p in per2), "test set-up: wave 2 must be smaller per partition"
        wait_for(lambda: store.count_events() == n, 240, "wave 2 after the broker restart", diagnostics=dep.logs)
        assert proc.poll() is None, dep.logs()  # reconnected by itself
        figures = delivery(store, second.bootstrap, dep, [], len(MODELS), by_event_id=[e.event_id for e in corpus.events])
        assert_nothing_lost_or_duplicated(figures, alerts=False)  # wave 1's alerts left with the first broker
        record({"fault": "broker process restarted (between waves; memory storage)", "seed": SEED, "trials": 1,
                "restarts": 0, **figures})
    finally:
        dep.stop_all()
        store.close()
        (second or first).stop()


def test_models_that_fail_on_every_call_are_our_fault(broker, pg_url, tmp_path):
    """A model whose every forward pass fails (NaN weights: it loads, and gives NaN): nothing is
    dead-lettered or committed, /readyz is 503, and after guard.fault_exit_s the worker exits 1
    for a restart. A worker with a good model then stores every event."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from worker.harness import committed_offsets
    from worker.models import load_autoencoder
    from worker.zoo import zoo_model

    good = zoo_model("kl-f4c4")
    broken_dir = tmp_path / "nan-model"
    shutil.copytree(good.path, broken_dir)
    weights = broken_dir / "diffusion_pytorch_model.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(weights).items()}, weights)
    calibration = json.loads(good.calibration_path.read_text())
    calibration["weights_sha256"] = load_autoencoder(str(broken_dir), device="cpu").weights_sha256
    (tmp_path / "nan.json").write_text(json.dumps(calibration))
    corpus = make_corpus(["kl-f4c4"], per_model=12, real=12, seed=SEED % 1000 + 4, with_broken=False)
    exit_s = 20.0
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, [("kl-f4c4", str(broken_dir), str(tmp_path / "nan.json"))],
                        max_size=8, sections={"guard": {"fault_exit_s": exit_s}})
    produced = Produced()
    produce(broker.bootstrap, dep.topic, corpus, produced=produced)
    store = SqlStore.from_url(pg_url)
    serve = dep.start()
    try:
        wait_for(lambda: 'aedr_faulted{cause="models"} 1.0' in scrape(serve.metrics_port), 120,
                 "the worker to hold its batch", diagnostics=dep.logs)
        held_at = time.monotonic()
        assert status(serve.metrics_port, "/readyz") == 503
        code = serve.proc.wait(timeout=exit_s + 60)
        held_s = time.monotonic() - held_at
        assert code == 1, dep.logs()
        assert "aedr: error: stopped on a fault of its own" in serve.log()
        assert store.count_events() == 0  # nothing stored, nothing dead-lettered, nothing committed
        assert read_topic(broker.bootstrap, dep.dlq, 0, timeout_s=5) == []
        assert committed_offsets(broker.bootstrap, dep.group, dep.topic) == {}
        fixed = ServeLauncher(broker.bootstrap, pg_url, tmp_path, ["kl-f4c4"], topic=dep.topic, max_size=8)
        fixed.start()
        wait_for(lambda: store.count_events() == len(corpus.values), 180, "a good model to store every event",
                 diagnostics=fixed.logs)
        dep.processes += fixed.processes  # one record of both workers' processing
        figures = delivery(store, broker.bootstrap, dep, produced.positions, 1, produced.valid)
        assert_nothing_lost_or_duplicated(figures)
        record({"fault": "models fail on every call (NaN weights), then a good model", "seed": SEED, "trials": 1,
                "restarts": 1, "held_seconds_before_exit": round(held_s, 1), "exit_status": code,
                "dead_lettered_while_held": 0, **figures})
    finally:
        dep.stop_all()
        store.close()
