"""`aedr evaluate` and `aedr serve` agree: the same images, as files and as upload events, get the
same best match (or none) from the same config, on the real broker and Postgres."""

from __future__ import annotations

import json

from tests.integration.conftest import ServeLauncher, make_corpus, produce, read_topic, wait_for
from worker.cli import main
from worker.corpus import REAL, png_bytes
from worker.storage import SqlStore

MODELS = ["kl-f4c4", "kl-f8c4", "vq-f4"]


def test_serve_alerts_name_the_best_matches_that_evaluate_predicts(broker, pg_url, tmp_path):
    corpus = make_corpus(MODELS, per_model=6, real=12, seed=31, with_broken=False)
    truth_dirs = {}
    for e in corpus.events:
        label = "none" if e.truth == REAL else e.truth
        folder = truth_dirs.setdefault(label, tmp_path / "truth" / label)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{e.event_id}.png").write_bytes(png_bytes(e.image))

    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, MODELS, sections={"scoring": {"threads": 1}})
    config = dep.config(metrics_port=0)  # the very config `aedr serve` runs with
    predictions = tmp_path / "predictions.jsonl"
    code = main(["evaluate", "--config", str(config), "--out", str(tmp_path / "report.json"), "--quiet",
                 "--predictions", str(predictions),
                 *[a for label, d in truth_dirs.items() for a in ("--truth", f"{label}={d}")]])
    assert code == 0
    predicted = {}
    for line in predictions.read_text().splitlines():
        p = json.loads(line)
        predicted[p["image"].rsplit("/", 1)[1].removesuffix(".png")] = p["predicted"]
    assert len(predicted) == len(corpus.events)

    produce(broker.bootstrap, dep.topic, corpus)
    dep.start()
    store = SqlStore.from_url(pg_url)
    try:
        wait_for(lambda: store.count_events() == len(corpus.events), 240, "all events stored", diagnostics=dep.logs)
        served = {r["event_id"]: r["best_match"] for r in store.events()}
        alerted = sum(1 for v in served.values() if v)
        alerts = {json.loads(r.value)["event_id"]: json.loads(r.value)["best_match"]["model"]
                  for r in read_topic(broker.bootstrap, dep.alerts, alerted)}
    finally:
        assert dep.stop_all() == [0]
    assert served == predicted
    assert alerts == {e: m for e, m in predicted.items() if m}  # the alerts name the same best matches
    # Not vacuous: some images alert, some do not, and at least two models are named.
    assert None in served.values() and len({v for v in served.values() if v}) >= 2
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == len(corpus.events) and report["unreadable"]["count"] == 0
