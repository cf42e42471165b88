"""Hunting for stalls: hypothesis drives the real worker loop (in-process fakes of the broker and
the clock, the real SQLite and Postgres stores) with generated hostile events and injected faults
(store outages, publish failures, models that fail, slow fetches), and checks after every run
that the committed offsets reached the end of every partition within a bounded number of turns,
with every event stored once and nothing committed past an unstored event."""

from __future__ import annotations

import base64
import functools
import json
import threading
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from tests.conftest import build_module, random_images
from worker.calibration import Calibration
from worker.completion import Completion, ProducerSlot
from worker.config import BatchSettings, GuardSettings, ImageSettings, RetrySettings
from worker.corpus import png_header, upload_event
from worker.events import InvalidEvent, Reason
from worker.health import Health
from worker.metrics import Metrics
from worker.models import from_module
from worker.outcomes import Publishing
from worker.pipeline import Worker
from worker.prepare import prepare
from worker.scoring import preprocessing_spec, score_images
from worker.scoring_pool import ScoringPool
from worker.storage import SqlStore, upgrade
from worker.testing import FakeBroker, FakeClock, InlineExecutor, ManualExecutor
from worker.watchlist import WatchedModel, Watchlist

IMAGE = random_images(1, 24, 24, seed=40)[0]

# The reproductions of the issue, and more: values a user can send.
HOSTILE = {
    "valid": lambda e: upload_event(e, IMAGE, metadata={"e": e}),
    "huge number": lambda e: b'{"event_id": "%s", "image_b64": "AAAA", "metadata": {"n": %s}}' % (e.encode(), b"9" * 5000),
    "NUL field name": lambda e: json.dumps({"event_id": e, "image_b64": "AAAA", "\u0000": 1}).encode(),
    "lone surrogate": lambda e: b'{"event_id": "%s", "image_b64": "AAAA", "\\udc80": 1}' % e.encode(),
    "NaN metadata": lambda e: b'{"event_id": "%s", "image_b64": "AAAA", "metadata": {"x": NaN}}' % e.encode(),
    "1e999 metadata": lambda e: b'{"event_id": "%s", "image_b64": "AAAA", "metadata": {"x": 1e999}}' % e.encode(),
    "huge metadata": lambda e: upload_event(e, IMAGE, metadata={"e": "\U0001F600" * 30_000}),
    "tombstone": lambda e: None,
    "empty": lambda e: b"",
    "not json": lambda e: b"\xff\x00garbage",
    "bomb": lambda e: upload_event(e, image_b64=base64.b64encode(png_header(9000, 9000)).decode()),
    "slow fetch": lambda e: upload_event(e, image_url="slow://x/a.png"),
    "poison for the model": lambda e: upload_event(e, random_images(1, 40, 40, seed=len(e))[0]),
}


@functools.cache
def _provenance_files() -> dict[str, bytes]:
    """Valid images whose provenance is hostile (tests/hostile.py), and one whose trusted
    credential makes the worker skip the models (the anchor below)."""
    from PIL import Image

    from tests import provenance_fixtures as F
    from tests.hostile import provenance_variants

    files = {f"provenance: {name}": data for name, data, _ in provenance_variants(Image.fromarray(IMAGE))}
    files["provenance: trusted credential, models skipped"] = F.sign(F.encode(IMAGE, "JPEG"), "image/jpeg", _anchor())
    return files


def _provenance_event(name: str):
    return lambda e: upload_event(e, image_b64=base64.b64encode(_provenance_files()[name]).decode(), metadata={"e": e})


@functools.cache
def _anchor():
    """A test certificate chain whose root the worker trusts."""
    from tests import provenance_fixtures as F

    return F.make_chain("stalls")


PROVENANCE_KINDS = ("billion laughs in XMP", "external entity in XMP", "zip bomb in XMP iTXt", "JUMBF box declaring 1 TiB",
                    "600 APP11 segments", "10 000 PNG text chunks", "40 000-entry EXIF", "remote C2PA manifest",
                    "tampered C2PA manifest", "trusted credential, models skipped")
HOSTILE.update({f"provenance: {name}": _provenance_event(f"provenance: {name}") for name in PROVENANCE_KINDS})
SCORED = {"valid", "huge metadata"} | {f"provenance: {n}" for n in PROVENANCE_KINDS if n != "zip bomb in XMP iTXt"}


def _provenance_step():
    """Provenance as the worker runs it, trusting `_anchor()`'s root, with the skip rule on."""
    from worker.provenance import ProvenanceSettings
    from worker.provenance.settings import TrustAnchors
    from worker.provenance_step import Provenance

    return Provenance(ProvenanceSettings(skip_reconstruction_when_trusted=True),
                      TrustAnchors(pem=_anchor().root_pem.decode(), count=1))


class SlowSource:
    """image_url fetching that takes `fetch.timeout_s` of clock time and then gives up."""

    def __init__(self, clock: FakeClock):
        self.clock = clock

    def fetch(self, url: str) -> bytes:
        self.clock.advance(2.0)
        raise InvalidEvent(Reason.FETCH, "fetch took longer than 2.0 s")


class Flaky:
    """The watchlist; raises on 40×40 images (poison), and on everything while `down` > 0."""

    def __init__(self, inner: Watchlist):
        self.inner = inner
        self.down = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score(self, items):
        if self.down > 0:
            self.down -= 1
            raise RuntimeError("device lost")
        if any(item.crops[0][0].shape[0] == 40 for item in items):  # model 0, first tile
            raise RuntimeError("model crashed on this input")
        return self.inner.score(items)

    def probe(self):
        if self.down > 0:
            raise RuntimeError("device lost")


@pytest.fixture(scope="module")
def watchlist() -> Watchlist:
    model = from_module(build_module("kl", seed=1), "kl", name="alpha")
    own = score_images(model, random_images(20, 24, 24, seed=1))
    calibration = Calibration.fit("alpha", model.weights_sha256, preprocessing_spec(model.spatial_factor, None, model.dtype),
                                  [s.score for s in own], alpha=0.5)
    return Watchlist([WatchedModel("alpha", model, calibration, None)], batch_size=8)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('stalls') / 'aedr.sqlite'}"
        upgrade(url)
        s = SqlStore.from_url(url)
        yield s
        s.close()
        return
    from worker.harness import postgres_database

    with postgres_database(request.getfixturevalue("pg_server_url"), "aedr_stalls") as url:
        s = SqlStore.from_url(url)
        yield s
        s.close()


class FailingStore:
    """The real store, unreachable while `down` > 0 (each failed save counts one down)."""

    def __init__(self, inner: SqlStore):
        self.inner = inner
        self.down = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def save(self, outcomes, published=()):
        if self.down > 0:
            self.down -= 1
            raise ConnectionError("database unreachable")
        return self.inner.save(outcomes, published)


@dataclass
class Faults:
    store_down: int  # failed saves before the database comes back
    publish_down: int  # failed publishes
    models_down: int  # batches the models fail on entirely


events_strategy = st.lists(st.sampled_from(sorted(HOSTILE)), min_size=1, max_size=24)
faults_strategy = st.builds(Faults, st.integers(0, 4), st.integers(0, 4), st.integers(0, 3))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kinds=events_strategy, faults=faults_strategy, max_size=st.sampled_from([1, 3, 8]),
       partitions=st.integers(1, 3), threaded=st.booleans())
def test_no_input_or_fault_stalls_a_partition(watchlist, store, kinds, faults, max_size, partitions, threaded):
    clock = FakeClock()
    broker = FakeBroker(clock=clock)
    topic = f"stall-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions)
    run = uuid.uuid4().hex[:6]  # event ids unique across examples (the store is shared)
    values = [HOSTILE[k](f"{run}-{i}") for i, k in enumerate(kinds)]
    for i, value in enumerate(values):
        broker.produce(topic, value, key=f"k{i}".encode(), partition=i % partitions)
    metrics = Metrics(CollectorRegistry())
    health = Health(metrics)
    health.loaded()
    failing = FailingStore(store)
    failing.down = faults.store_down
    producer = broker.producer(max_request_size=200_000)
    producer.fail_next = faults.publish_down
    scorer = Flaky(watchlist)
    scorer.down = faults.models_down
    consumer = broker.consumer(topic, "g")
    retry = RetrySettings(initial_s=0.5, max_s=4.0)
    publishing = Publishing(f"{topic}.alerts", f"{topic}.dlq", max_alert_bytes=50_000, max_message_bytes=200_000)
    completion = Completion(failing, ProducerSlot(lambda: producer), consumer, metrics, clock, health, publishing, retry)
    source = SlowSource(clock)
    inspect = _provenance_step().inspect
    pool = ScoringPool([scorer], lambda m, s: prepare(m, source, ImageSettings(max_pixels=1_000_000), s.prepare,
                                                      inspect=inspect), executors=[InlineExecutor()])
    batch = BatchSettings(max_size=max_size, max_wait_ms=50, max_buffered=2 * max_size, prepare_threads=0).resolved(False)
    completer = ManualExecutor(clock) if threaded else None  # stores beside the loop, as `aedr serve` does
    worker = Worker(consumer, pool, completion, publishing, batch, retry, clock, metrics, health, threading.Event(),
                    guard=GuardSettings(fault_exit_s=0), complete_executor=completer,
                    wait=completer.wait if completer else None)
    ends = {tp: len(broker.logs[tp]) for tp in broker.partitions(topic)}
    bound = 50 + 10 * len(values) + 20 * (faults.store_down + faults.publish_down + faults.models_down)
    for turn in range(bound):
        worker.step()
        if completer is not None:
            completer.run_all()  # the completion thread's turn
        clock.advance(0.5)
        committed = {tp: broker.committed.get(("g", tp), 0) for tp in ends}
        if committed == ends:
            break
    assert committed == ends, f"stalled after {bound} turns: committed {committed}, ends {ends}"
    rows = {(r["partition"], r["offset"]): r for r in store.events() if r["topic"] == topic}
    assert len(rows) == len(values)  # every event stored, once (the events table's key is event_id)
    for (partition, offset), row in rows.items():
        kind = kinds[[i for i in range(len(values)) if i % partitions == partition][offset]]
        if kind in SCORED:
            assert row["status"] == "scored", (kind, row["error"])
        else:
            assert row["status"] == "failed" and "\x00" not in row["error"], (kind, row)
        if kind == "poison for the model":
            assert row["error"].startswith("internal:")
    dead = broker.records(f"{topic}.dlq")
    assert len(dead) == sum(1 for r in rows.values() if r["status"] == "failed")
    assert all(len(m.value or b"") <= 200_000 for m in dead)
    for alert in broker.records(f"{topic}.alerts"):
        payload = json.loads(alert.value)  # valid JSON (no NaN), within the alert limit
        assert len(alert.value) <= 50_000
        if "_aedr_truncated" in payload["metadata"]:
            assert payload["metadata"]["_aedr_truncated"]["keys"] == ["e"]
    assert np.isfinite([a["score"] for a in store.attributions() if a["event_id"].startswith(run)]).all()
