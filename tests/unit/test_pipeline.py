"""The worker loop against an in-memory consumer/producer/store (fast; the same behaviour is
tested against the real broker and Postgres in tests/integration)."""

from __future__ import annotations

import base64
import io
import json
import time
from collections import namedtuple

import numpy as np
import pytest
from kafka import TopicPartition
from PIL import Image
from prometheus_client import CollectorRegistry

from tests.conftest import build_module, random_images
from worker.calibration import Calibration
from worker.config import BatchSettings, DatabaseSettings, FetchSettings
from worker.fetch import Fetcher
from worker.metrics import Metrics
from worker.models import from_module
from worker.pipeline import Topics, Worker
from worker.scoring import preprocessing_spec, score_images
from worker.storage import MemoryStore
from worker.watchlist import WatchedModel, Watchlist

Record = namedtuple("Record", "topic partition offset key value headers")


class FakeFuture:
    def __init__(self, fail: bool = False):
        self.fail = fail

    def get(self, timeout=None):
        if self.fail:
            raise ConnectionError("broker did not acknowledge")
        return None


class FakeProducer:
    def __init__(self):
        self.sent: list[tuple] = []
        self.fail_next = 0

    def send(self, topic, value=None, key=None, headers=None):
        if self.fail_next:
            self.fail_next -= 1
            return FakeFuture(fail=True)
        self.sent.append((topic, value, key, headers or []))
        return FakeFuture()

    def flush(self, timeout=None):
        pass


class FakeConsumer:
    """Partitions as lists; poll hands out records from unpaused partitions in order."""

    def __init__(self, records_by_partition: dict[int, list[bytes]], topic: str = "uploads"):
        self.topic = topic
        self.logs = {TopicPartition(topic, p): values for p, values in records_by_partition.items()}
        self.position = {tp: 0 for tp in self.logs}
        self.paused: set = set()
        self.commits: list[dict] = []
        self.committed: dict = {}
        self.pause_calls = 0

    def poll(self, timeout_ms=0, max_records=None):
        out: dict = {}
        budget = max_records or 10**9
        for tp, values in self.logs.items():
            if tp in self.paused:
                continue
            batch = []
            while self.position[tp] < len(values) and budget > 0:
                offset = self.position[tp]
                batch.append(Record(tp.topic, tp.partition, offset, f"k{offset}".encode(), values[offset], []))
                self.position[tp] += 1
                budget -= 1
            if batch:
                out[tp] = batch
        if not out:  # like a real consumer: an idle poll waits (here at most 10 ms)
            time.sleep(min(timeout_ms, 10) / 1000)
        return out

    def pause(self, *tps):
        self.pause_calls += 1
        self.paused |= set(tps)

    def resume(self, *tps):
        self.paused -= set(tps)

    def assignment(self):
        return set(self.logs)

    def commit(self, offsets=None):
        self.commits.append({tp: om.offset for tp, om in offsets.items()})
        self.committed.update({tp: om.offset for tp, om in offsets.items()})

    def highwater(self, tp):
        return len(self.logs[tp])


def png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def event(event_id: str, image: np.ndarray) -> bytes:
    return json.dumps({"event_id": event_id, "image_b64": png_b64(image), "metadata": {"n": event_id}}).encode()


@pytest.fixture(scope="module")
def watchlist() -> Watchlist:
    entries = []
    for name, variant, seed in (("alpha", "kl", 1), ("beta", "vq", 2)):
        model = from_module(build_module(variant, seed=seed), "kl" if variant == "kl" else "vq", name=name)
        own = score_images(model, random_images(20, 32, 32, seed=seed))
        scores = [s.score for s in own]
        calibration = Calibration.fit(name, model.weights_sha256, preprocessing_spec(model.spatial_factor, None, model.dtype),
                                      scores, alpha=0.5)  # τ at the median: about half the images match
        entries.append(WatchedModel(name, model, calibration, None))
    return Watchlist(entries, batch_size=8)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def make_worker(consumer, watchlist, store=None, producer=None, **batch) -> Worker:
    return Worker(
        consumer=consumer, producer=producer or FakeProducer(), store=store or MemoryStore(), watchlist=watchlist,
        fetcher=Fetcher(FetchSettings(), 10**7), metrics=Metrics(CollectorRegistry()),
        topics=Topics("alerts", "dlq"), batch=BatchSettings(**{"max_size": 4, "max_wait_ms": 50, "max_buffered": 8,
                                                               "prepare_threads": 2, **batch}),
        database=DatabaseSettings(retry_initial_s=0.0, retry_max_s=0.0), tp_factory=lambda r: TopicPartition(r.topic, r.partition),
    )


def run_until_committed(worker: Worker, n: int, steps: int = 2000) -> None:
    for _ in range(steps):
        worker.step()
        if worker.committed_events >= n:
            return
    raise AssertionError(f"only {worker.committed_events} of {n} events committed")


def test_scores_stores_alerts_dead_letters_and_commits(watchlist):
    images = random_images(7, 32, 32, seed=11)
    values = [event(f"e{i}", im) for i, im in enumerate(images)]
    values.insert(3, b"{broken json")
    values.insert(5, json.dumps({"event_id": "no-image"}).encode())
    consumer = FakeConsumer({0: values[:5], 1: values[5:]})
    store, producer = MemoryStore(), FakeProducer()
    worker = make_worker(consumer, watchlist, store, producer)
    run_until_committed(worker, len(values))

    assert len(store.rows) == len(values)
    failed = {k: v for k, v in store.rows.items() if v.status == "failed"}
    assert failed["no-image"].error.startswith("schema:")
    assert any(k.startswith("unparsed:uploads/0/3") and v.error.startswith("bad_json:") for k, v in failed.items())
    # Stored numbers are exactly the offline scores of the same images.
    for i, image in enumerate(images):
        row = store.rows[f"e{i}"]
        assert row.status == "scored"
        for attribution, entry in zip(row.attributions, watchlist.entries):
            offline = score_images(entry.model, [image])[0]
            assert attribution.score == pytest.approx(offline.score, rel=1e-4)  # batch of 4 vs 1
            assert attribution.belongs == (offline.score < entry.threshold)
    # One alert per event with a match; best_match is the lowest score/threshold.
    alerts = [json.loads(v) for t, v, k, h in producer.sent if t == "alerts"]
    matched = {k for k, v in store.rows.items() if any(a.belongs for a in v.attributions)}
    assert {a["event_id"] for a in alerts} == matched and matched
    for alert in alerts:
        ratios = {m["model"]: m["score"] / m["threshold"] for m in alert["matches"]}
        assert alert["best_match"]["model"] == min(ratios, key=ratios.get)
        assert alert["metadata"] == {"n": alert["event_id"]}
    # Dead letters carry the original bytes and key, and the reason in headers.
    dlq = [(v, k, dict(h)) for t, v, k, h in producer.sent if t == "dlq"]
    assert {v for v, _, _ in dlq} == {b"{broken json", json.dumps({"event_id": "no-image"}).encode()}
    assert sorted(h["aedr.reason"] for _, _, h in dlq) == [b"bad_json", b"schema"]
    # Everything committed, to the end of each partition.
    assert consumer.committed == {TopicPartition("uploads", 0): 5, TopicPartition("uploads", 1): 4}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in worker.metrics.registry.collect() for s in f.samples}
    assert samples[("aedr_events_total", (("outcome", "scored"),))] == 7
    assert samples[("aedr_events_total", (("outcome", "dead_lettered"),))] == 2
    assert samples[("aedr_dlq_total", (("reason", "bad_json"),))] == 1


def test_no_commit_until_stored_then_retry_succeeds(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(4, 32, 32, seed=3))]
    consumer = FakeConsumer({0: values})
    store = MemoryStore(fail_next=3)
    worker = make_worker(consumer, watchlist, store)
    for _ in range(200):
        worker.step()
        if store.fail_next == 0:
            break
    assert consumer.commits == []  # three failed saves, nothing committed
    run_until_committed(worker, 4)
    assert consumer.committed == {TopicPartition("uploads", 0): 4}
    assert len(store.rows) == 4 and store.saves == 1


def test_unacknowledged_alerts_block_the_commit(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(8, 32, 32, seed=4))]
    consumer = FakeConsumer({0: values})
    producer = FakeProducer()
    producer.fail_next = 1
    worker = make_worker(consumer, watchlist, producer=producer, max_size=8)
    run_until_committed(worker, 8)
    assert producer.fail_next == 0  # the first publish really failed …
    assert len(consumer.commits) == 1  # … and that attempt committed nothing
    assert any(t == "alerts" for t, *_ in producer.sent)


def test_batches_are_bounded_and_partitions_pause_when_full(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(20, 32, 32, seed=5))]
    consumer = FakeConsumer({0: values})
    worker = make_worker(consumer, watchlist, max_size=4, max_buffered=6)
    run_until_committed(worker, 20)
    assert consumer.pause_calls >= 1
    sizes = [len(c) for c in consumer.commits]
    assert sizes and all(n == 1 for n in sizes)
    offsets = [c[TopicPartition("uploads", 0)] for c in consumer.commits]
    assert offsets == sorted(offsets) and offsets[-1] == 20
    assert all(b - a <= 4 for a, b in zip([0] + offsets, offsets))  # no batch above max_size


class WatchedScoring:
    """The watchlist, with a flag that is up while a batch is being scored."""

    def __init__(self, watchlist: Watchlist):
        self._watchlist = watchlist
        self.busy = False
        self.batches = 0

    def __getattr__(self, name):
        return getattr(self._watchlist, name)

    def score(self, images):
        self.busy = True
        try:
            time.sleep(0.02)  # long enough that an overlapping loop would poll meanwhile
            return self._watchlist.score(images)
        finally:
            self.batches += 1
            self.busy = False


class WatchingConsumer(FakeConsumer):
    """Counts the calls made into the client while `scoring.busy`."""

    def __init__(self, scoring: WatchedScoring, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scoring = scoring
        self.calls_while_scoring = 0
        self.calls = 0

    def poll(self, timeout_ms=0, max_records=None):
        self.calls += 1
        self.calls_while_scoring += self.scoring.busy
        return super().poll(timeout_ms, max_records)


@pytest.mark.parametrize("inflight", [1, 2])
def test_serial_mode_leaves_the_model_alone_and_loses_nothing(watchlist, inflight):
    """inflight = 1 (the CPU default): the loop sleeps while a batch is scored, so nothing runs
    beside the model's threads; 2: it polls (and completes the previous batch) meanwhile."""
    images = random_images(16, 32, 32, seed=8)
    scoring = WatchedScoring(watchlist)
    consumer = WatchingConsumer(scoring, {0: [event(f"e{i}", im) for i, im in enumerate(images)]})
    store = MemoryStore()
    worker = make_worker(consumer, scoring, store, max_size=4, max_buffered=8, prepare_threads=0, inflight=inflight)
    run_until_committed(worker, 16)
    worker.run(until=lambda: True)  # drain and shut the pools down
    assert scoring.batches == 4 and len(store.rows) == 16
    assert consumer.committed == {TopicPartition("uploads", 0): 16}
    if inflight == 1:
        assert consumer.calls_while_scoring == 0 and consumer.calls >= 4
    else:
        assert consumer.calls_while_scoring > 0


def test_a_partition_that_moves_is_not_committed_and_nothing_is_dropped(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(12, 32, 32, seed=6))]
    consumer = FakeConsumer({0: values[:6], 1: values[6:]})
    store = MemoryStore()
    worker = make_worker(consumer, watchlist, store, max_size=4, max_buffered=12)
    while not worker._inflight:
        worker.step()
    moved = TopicPartition("uploads", 1)
    worker.on_partitions_revoked([moved])  # p1 moves to another worker …
    del consumer.logs[moved]
    run_until_committed(worker, 12)
    assert len(store.rows) == 12  # … everything fetched is still stored (idempotently) …
    assert moved not in consumer.committed  # … but only the new owner commits p1
    assert consumer.committed == {TopicPartition("uploads", 0): 6}


def test_hostile_events_get_their_specific_reasons(watchlist):
    """A slice of the hostile corpus through the worker's prepare stage (the integration test
    sends ≥ 10 000 through a real worker)."""
    from tests.hostile import SCORED, corpus
    from worker.images import ImageLimits

    worker = make_worker(FakeConsumer({0: []}), watchlist)
    worker.image_limits = ImageLimits(max_bytes=1 << 20)
    wrong = []
    for i, item in enumerate(corpus(n=1400, seed=3, oversized_mb=2)):
        prepared = worker._prepare(Record("uploads", 0, i, b"k", item.value, []))
        got = SCORED if prepared.image is not None else prepared.error.reason
        if got not in item.expected.split("|"):
            wrong.append((item.cls, item.expected, got, str(prepared.error)[:100]))
    assert not wrong, wrong[:5]


def test_an_image_that_crashes_scoring_is_dead_lettered_and_the_rest_scored(watchlist):
    images = random_images(6, 32, 32, seed=21)
    poison = random_images(1, 40, 40, seed=22)[0]  # its shape marks it for the failing scorer
    values = [event(f"e{i}", im) for i, im in enumerate(images)]
    values.insert(2, event("poison", poison))

    class Fragile:
        def __init__(self, inner):
            self.inner = inner

        def score(self, items):
            if any(item.crops[0].shape[0] == 40 for item in items):
                raise RuntimeError("model crashed on this input")
            return self.inner.score(items)

    consumer, store, producer = FakeConsumer({0: values}), MemoryStore(), FakeProducer()
    worker = make_worker(consumer, watchlist, store, producer, max_size=8)
    worker.scorers = (Fragile(watchlist),)
    run_until_committed(worker, len(values))
    assert store.rows["poison"].status == "failed" and "scoring failed" in store.rows["poison"].error
    assert all(store.rows[f"e{i}"].status == "scored" for i in range(6))
    assert [dict(h)["aedr.reason"] for t, v, k, h in producer.sent if t == "dlq"] == [b"decode"]
    assert consumer.committed == {TopicPartition("uploads", 0): 7}


def test_a_producer_that_keeps_failing_is_replaced(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(8, 32, 32, seed=4))]
    consumer = FakeConsumer({0: values})
    broken = FakeProducer()
    broken.fail_next = 10**9  # a producer in a fatal state: every send fails
    fresh = FakeProducer()
    worker = make_worker(consumer, watchlist, producer=broken, max_size=8)
    worker.producer_factory = lambda: fresh
    run_until_committed(worker, 8)
    assert worker.producer is fresh and any(t == "alerts" for t, *_ in fresh.sent)
    assert consumer.committed == {TopicPartition("uploads", 0): 8}


def test_lag_gauge_drops_partitions_that_moved(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(4, 32, 32, seed=9))]
    consumer = FakeConsumer({0: values[:2], 1: values[2:]})
    worker = make_worker(consumer, watchlist)
    run_until_committed(worker, 4)
    worker.step()
    labels = lambda: {s.labels["partition"] for f in worker.metrics.registry.collect() for s in f.samples
                      if s.name == "aedr_consumer_lag"}
    assert labels() == {"0", "1"}
    del consumer.logs[TopicPartition("uploads", 1)]  # partition 1 moved to another worker
    worker.step()
    assert labels() == {"0"}
