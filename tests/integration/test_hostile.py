"""≥ 10 000 hostile events through a real worker: it never crashes or stalls, every bad event is
dead-lettered with its specific reason, and valid exotic images are converted and scored."""

from __future__ import annotations

import os
import urllib.request
from collections import Counter, defaultdict

from tests.hostile import SCORED, corpus
from tests.integration.conftest import ServeLauncher, produce_values, read_topic, record, wait_for
from worker.storage import SqlStore

IMAGE_LIMIT = 4 * 1024 * 1024


def test_hostile_corpus_is_dead_lettered_with_reasons(broker, pg_url, tmp_path):
    seed = int(os.environ.get("AEDR_FAULT_SEED", "20261128"))
    n = int(os.environ.get("AEDR_HOSTILE_N", "10000"))
    items = corpus(n=n, seed=seed, oversized_mb=8)
    print(f"hostile corpus: seed {seed}, {len(items)} events")
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, ["kl-f4c4"], max_size=64,
                     sections={"images": {"max_bytes": IMAGE_LIMIT}})
    positions = produce_values(broker.bootstrap, dep.topic, [h.value for h in items])
    store = SqlStore.from_url(pg_url)
    serve = dep.start()
    proc, port = serve.proc, serve.metrics_port
    try:
        wait_for(lambda: store.count_events() == len(items) or proc.poll() is not None, 600,
                 "every hostile event", interval=1.0, diagnostics=dep.logs)
        assert proc.poll() is None, dep.logs()  # never crashed
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
        rows = {(r["partition"], r["offset"]): r for r in store.events() if r["topic"] == dep.topic}
        assert len(rows) == len(items)
        per_class: dict[str, Counter] = defaultdict(Counter)
        wrong = []
        for item, position in zip(items, positions):
            row = rows[position]
            got = SCORED if row["status"] == "scored" else row["error"].split(":", 1)[0]
            per_class[item.cls][got] += 1
            if got not in item.expected.split("|"):
                wrong.append((item.cls, item.expected, got, (row["error"] or "")[:120]))
        assert not wrong, f"{len(wrong)} events with the wrong outcome, e.g. {wrong[:5]}"
        failed = sum(1 for r in rows.values() if r["status"] == "failed")
        dead = read_topic(broker.bootstrap, dep.dlq, failed, timeout_s=120)
        assert len(dead) == failed
        by_source = {dict(d.headers)["aedr.source"].decode(): dict(d.headers)["aedr.reason"].decode() for d in dead}
        for (partition, offset), row in rows.items():
            if row["status"] == "failed":
                assert by_source[f"{dep.topic}/{partition}/{offset}"] == row["error"].split(":", 1)[0]
        # Provenance never failed on them: hostile metadata is a recorded limit/malformed error.
        internal = [e for e in store.provenance_errors() if e["reason"] == "internal"]
        assert not internal, internal[:5]
        exotic = {c: dict(v) for c, v in per_class.items() if c.startswith("valid exotic")}
        assert exotic and all(set(v) == {SCORED} for v in exotic.values())
        for cls, outcomes in sorted(per_class.items()):
            record({"fault": f"hostile input: {cls}", "seed": seed, "trials": sum(outcomes.values()),
                    "produced": sum(outcomes.values()), "lost": 0, "duplicated": 0,
                    "dead_lettered": sum(v for k, v in outcomes.items() if k != SCORED),
                    "scored": outcomes.get(SCORED, 0), "reasons": dict(outcomes), "restarts": 0})
    finally:
        dep.stop_all()
        store.close()
