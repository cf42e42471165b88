"""`aedr serve` with a watchlist that mixes six autoencoder families (KL, VQ, Tiny, SANA's DC-AE,
FLUX.2, Qwen-Image), against the real broker (Tansu) and the real Postgres: every event stored,
one attribution per model, and the numbers equal to offline scoring of the same pixels (the stored
score is the calibration's method applied to those statistics: the paper's t' or the fused score)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.conftest import ServeLauncher, make_corpus, produce, wait_for
from worker.calibration import Calibration
from worker.models import load_autoencoder
from worker.scoring import score_images
from worker.storage import SqlStore
from worker.zoo import zoo_model

MODELS = ["kl-f4c4", "vq-f4", "tiny-f8", "dc-f8c8", "flux2-f8c16", "qwen-f8c8"]


def test_serve_scores_a_watchlist_of_six_families(broker, pg_url, tmp_path):
    kinds = {name: zoo_model(name).kind for name in MODELS}
    assert len(set(kinds.values())) == 6
    corpus = make_corpus(MODELS, per_model=2, real=4, seed=21)
    n_valid, n_broken = len(corpus.images), len(corpus.broken)
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, MODELS)
    produce(broker.bootstrap, dep.topic, corpus)
    serve = dep.start()
    store = SqlStore.from_url(pg_url)
    try:
        wait_for(lambda: store.count_events() == n_valid + n_broken, 120, "all events stored", diagnostics=dep.logs)
        events = {r["event_id"]: r for r in store.events()}
        rows = store.attributions()

        assert sum(r["status"] == "scored" for r in events.values()) == n_valid
        assert sorted(r["error"].split(":")[0] for r in events.values() if r["status"] == "failed") == sorted(
            corpus.broken.values())
        assert Counter(r["event_id"] for r in rows) == Counter({e: len(MODELS) for e in corpus.images})
        assert {r["model"] for r in store.calibrations()} == set(MODELS)

        for name in MODELS:
            calibration = Calibration.load(zoo_model(name).calibration_path)
            assert calibration.family in ("", kinds[name])  # "": shipped before the field existed
            model = load_autoencoder(str(zoo_model(name).path), name=name, device="cpu")
            assert model.kind == kinds[name]
            mine = {r["event_id"]: r for r in rows if r["model"] == name}
            ids = sorted(mine)
            assert ids == sorted(corpus.images)
            for event_id, want in zip(ids, score_images(model, [corpus.images[i] for i in ids])):
                got = mine[event_id]
                assert got["score"] == pytest.approx(calibration.scorer.score(want), rel=1e-4)
                assert got["loss1"] == pytest.approx(want.loss1, rel=1e-4)
                assert got["loss2"] == pytest.approx(want.loss2, rel=1e-4)
                assert got["threshold"] == calibration.threshold
                assert got["belongs"] == (got["score"] < calibration.threshold)
    finally:
        code = serve.terminate(30)
        store.close()
    assert code == 0, dep.logs()
