"""≥ 10 000 hostile events through a real worker: it never crashes or stalls, every bad event is
dead-lettered with its specific reason, and valid exotic images are converted and scored."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from collections import Counter, defaultdict

import numpy as np

from tests.hostile import SCORED, corpus
from tests.integration.conftest import (
    ServeLauncher,
    assert_nothing_lost_or_duplicated,
    delivery,
    produce_values,
    read_topic,
    record,
    wait_for,
)
from tests.servers import RawServer
from worker.corpus import png_header, upload_event
from worker.harness import committed_offsets
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
        listed = [r for r in store.events() if r["topic"] == dep.topic]
        rows_per_position = Counter((r["partition"], r["offset"]) for r in listed)
        rows = {(r["partition"], r["offset"]): r for r in listed}
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
        figures = delivery(store, broker.bootstrap, dep, positions, 1,
                           {p for item, p in zip(items, positions) if item.expected == SCORED})
        assert_nothing_lost_or_duplicated(figures)
        dead_per_source = Counter(dict(d.headers)["aedr.source"].decode() for d in dead)
        for cls, outcomes in sorted(per_class.items()):
            mine = [p for item, p in zip(items, positions) if item.cls == cls]
            record({"fault": f"hostile input: {cls}", "seed": seed, "trials": len(mine), "produced": len(mine),
                    "stored": sum(1 for p in mine if rows_per_position[p]),
                    "lost": sum(1 for p in mine if rows_per_position[p] == 0),
                    "duplicated": sum(rows_per_position[p] - 1 for p in mine if rows_per_position[p] > 1),
                    "dead_lettered": sum(v for k, v in outcomes.items() if k != SCORED),
                    "dead_letters_published": sum(dead_per_source[f"{dep.topic}/{p[0]}/{p[1]}"] for p in mine),
                    "scored": outcomes.get(SCORED, 0), "reasons": dict(outcomes), "restarts": 0})
        record({"fault": "hostile input: all classes together", "seed": seed, "trials": 1, "restarts": 0, **figures})
    finally:
        dep.stop_all()
        store.close()


def test_every_reproduction_keeps_the_partition_committing(broker, pg_url, tmp_path):
    """The inputs and server faults that once stalled a partition, sent into a running worker on
    one partition between valid events: every one is dead-lettered (or scored) with its reason,
    within the fetch deadline, and the committed offset reaches the end."""

    root = tmp_path / "uploads"
    root.mkdir()
    os.mkfifo(root / "fifo.png")
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    bare_jpeg = RawServer([(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64, 0.0)])
    slow_headers = RawServer([(bytes([b]), 0.5) for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100])
    image = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    ico = b"\x00\x00\x01\x00\x01\x00" + bytes(8) + len(png_header(8000, 7000)).to_bytes(4, "little") + (22).to_bytes(4, "little")
    cases = [  # (name, value, expected reason or "scored")
        ("number of 5 000 digits", b'{"event_id": "r1", "image_b64": "AAAA", "metadata": {"n": ' + b"9" * 5000 + b"}}", "bad_json"),
        ("NUL field name", json.dumps({"event_id": "r2", "image_b64": "AAAA", "\u0000": 1}).encode(), "schema"),
        ("lone surrogate field", b'{"event_id": "r3", "image_b64": "AAAA", "\\udc80": 1}', "schema"),
        ("NaN in metadata", b'{"event_id": "r4", "image_b64": "AAAA", "metadata": {"x": NaN}}', "bad_json"),
        ("1e999 in metadata", b'{"event_id": "r5", "image_b64": "AAAA", "metadata": {"x": 1e999}}', "bad_json"),
        ("1 M emoji of metadata", upload_event("r6", image, metadata={"e": "\U0001F600" * 1_000_000}), "scored"),
        ("bare JPEG for an HTTP answer", upload_event("r7", image_url=f"http://127.0.0.1:{bare_jpeg.port}/a.jpg"), "fetch"),
        ("headers a byte at a time", upload_event("r8", image_url=f"http://127.0.0.1:{slow_headers.port}/a.png"), "fetch"),
        ("a FIFO under file_root", upload_event("r9", image_url=(root / "fifo.png").as_uri()), "fetch"),
        ("a symlink loop", upload_event("r10", image_url=(root / "loop-a").as_uri()), "fetch"),
        ("a port out of range", upload_event("r11", image_url="http://127.0.0.1:99999/a.png"), "fetch"),
        ("an ICO embedding a huge PNG", upload_event("r12", image_b64=b64(ico + png_header(8000, 7000))), "decode"),
        ("a tombstone", None, "schema"),
    ]
    names, values, expected = [], [], []
    for i, (name, value, reason) in enumerate(cases):
        names += ["valid", name]
        values += [upload_event(f"ok{i}", image), value]
        expected += ["scored", reason]
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, ["kl-f4c4"], max_size=4, sections={
        "fetch": {"allowed_schemes": ["http", "file"], "allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True,
                  "file_root": str(root), "timeout_s": 2.0}})
    positions = produce_values(broker.bootstrap, dep.topic, values, partitions=1)
    store = SqlStore.from_url(pg_url)
    started = time.monotonic()
    serve = dep.start()
    try:
        wait_for(lambda: committed_offsets(broker.bootstrap, dep.group, dep.topic, 1).get(0) == len(values), 240,
                 "the partition to commit every message", diagnostics=dep.logs)
        assert serve.proc.poll() is None, dep.logs()
        rows = {(r["partition"], r["offset"]): r for r in store.events() if r["topic"] == dep.topic}
        for name, position, want in zip(names, positions, expected):
            row = rows[position]
            got = "scored" if row["status"] == "scored" else row["error"].split(":", 1)[0]
            assert got == want, (name, row)
            assert "\x00" not in (row["error"] or "")
        alerts = read_topic(broker.bootstrap, dep.alerts, sum(1 for r in rows.values() if r["best_match"]), 60)
        for alert in alerts:
            payload = json.loads(alert.value)  # valid JSON within the default 1 MB limit, metadata cut and marked
            assert len(alert.value) <= 1_000_000
            if payload["event_id"] == "r6":
                assert payload["metadata"]["_aedr_truncated"]["keys"] == ["e"]
        figures = delivery(store, broker.bootstrap, dep, positions, 1,
                           {p for p, want in zip(positions, expected) if want == "scored"})
        assert_nothing_lost_or_duplicated(figures)
        record({"fault": "issue-12 reproductions between valid events (one partition)", "trials": len(cases),
                "seconds_to_commit_all": round(time.monotonic() - started, 1), "restarts": 0, **figures})
    finally:
        dep.stop_all()
        store.close()
        bare_jpeg.close()
        slow_headers.close()
