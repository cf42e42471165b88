"""The worker loop on the in-memory broker, store and clock (worker.testing): deterministic, no
threads, no sleeps. The same behaviour runs against the real broker and Postgres in
tests/integration."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import build_module, random_images
from worker.calibration import Calibration
from worker.completion import Completion, OffsetLedger, ProducerSlot
from worker.config import BatchSettings, FetchSettings, GuardSettings, ImageSettings, RetrySettings
from worker.corpus import upload_event
from worker.events import Reason
from worker.fetch import Fetcher
from worker.health import Health
from worker.lag import LagMonitor
from worker.messages import Message, Partition
from worker.metrics import Metrics
from worker.models import from_module
from worker.outcomes import Publishing
from worker.pipeline import Worker
from worker.prepare import prepare
from worker.scoring import preprocessing_spec, score_images
from worker.scoring_pool import ScoringPool
from worker.storage import MemoryStore
from worker.testing import FakeBroker, FakeClock, InlineExecutor, ManualExecutor
from worker.watchlist import WatchedModel, Watchlist

P0, P1 = Partition("uploads", 0), Partition("uploads", 1)


@pytest.fixture(scope="module")
def watchlist() -> Watchlist:
    entries = []
    for name, variant, seed in (("alpha", "kl", 1), ("beta", "vq", 2)):
        model = from_module(build_module(variant, seed=seed), "kl" if variant == "kl" else "vq", name=name)
        own = score_images(model, random_images(20, 32, 32, seed=seed))
        calibration = Calibration.fit(name, model.weights_sha256, preprocessing_spec(model.spatial_factor, None, model.dtype),
                                      [s.score for s in own], alpha=0.5)  # τ at the median: about half match
        entries.append(WatchedModel(name, model, calibration, None))
    return Watchlist(entries, batch_size=8)


@dataclass
class Rig:
    broker: FakeBroker
    clock: FakeClock
    store: MemoryStore
    worker: Worker
    metrics: Metrics
    health: Health

    @property
    def consumer(self):
        return self.worker.consumer

    def step_until_committed(self, n: int, steps: int = 500, between=lambda: None) -> None:
        for _ in range(steps):
            self.worker.step()
            between()
            if self.worker.committed_events >= n:
                return
        raise AssertionError(f"only {self.worker.committed_events} of {n} events committed")

    def sample(self, name: str, **labels: str) -> float | None:
        for family in self.metrics.registry.collect():
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return s.value
        return None

    def published(self, topic: str) -> list[Message]:
        return self.broker.records(topic)


def rig(watchlist, partitions: dict[int, list[bytes]], *, store: MemoryStore | None = None, scorer=None,
        executor=None, producer_factory=None, guard: GuardSettings = GuardSettings(),
        inspect=None, threaded: bool = False, scorers: list[ManualExecutor] | None = None, **batch) -> Rig:
    """A worker on a fake broker; `threaded`: stores and publishes on a completion executor
    (a ManualExecutor that runs when the loop waits on it), as `aedr serve` does. `scorers`:
    one scorer per executor, each run only by the test (the loop never waits)."""
    clock = FakeClock()
    broker = FakeBroker(clock=clock)
    broker.create_topic("uploads", max(partitions) + 1 if partitions else 1)
    for p, values in partitions.items():
        for i, value in enumerate(values):
            broker.produce("uploads", value, key=f"k{p}-{i}".encode(), partition=p)
    store = store if store is not None else MemoryStore()
    metrics = Metrics(CollectorRegistry())
    health = Health(metrics, clock, guard.stall_s)
    health.loaded()
    ledger = OffsetLedger()
    consumer = broker.consumer("uploads", "g", ledger)
    retry = RetrySettings(initial_s=0.5, max_s=4.0)
    publishing = Publishing("alerts", "dlq")
    completion = Completion(store, ProducerSlot(producer_factory or broker.producer), consumer, metrics, clock, health,
                            publishing, retry, ledger)
    fetcher = Fetcher(FetchSettings(), 10**7)
    pool = ScoringPool([scorer or watchlist] * len(scorers or [None]),
                       lambda m, s: prepare(m, fetcher, ImageSettings(), s.prepare, inspect=inspect),
                       executors=scorers or [executor or InlineExecutor()])
    settings = BatchSettings(**{"max_size": 4, "max_wait_ms": 50, "max_buffered": 8, "prepare_threads": 0,
                                **batch}).resolved(on_gpu=False)
    waits = [e.wait for e in (executor,) if isinstance(e, ManualExecutor)]
    completer = ManualExecutor(clock) if threaded else None
    if completer is not None:
        waits.append(completer.wait)

    def wait(future, timeout: float) -> bool:
        return any(w(future, timeout) for w in waits) if waits else future.done()

    worker = Worker(consumer, pool, completion, publishing, settings, retry, clock, metrics, health,
                    threading.Event(), wait=wait if waits or scorers else None, guard=guard,
                    lag=LagMonitor(consumer, "uploads", ledger, metrics, clock, interval_s=0),
                    complete_executor=completer)
    if completer is not None:  # the completion thread runs between two turns of the loop (or when it waits)
        turn = worker.step
        worker.step = lambda: (turn(), completer.run_all())[0]
    return Rig(broker, clock, store, worker, metrics, health)


def event(event_id: str, image) -> bytes:
    return upload_event(event_id, image, metadata={"n": event_id})


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "threaded"])
def test_scores_stores_alerts_dead_letters_and_commits(watchlist, threaded):
    images = random_images(7, 32, 32, seed=11)
    values = [event(f"e{i}", im) for i, im in enumerate(images)]
    values.insert(3, b"{broken json")
    values.insert(5, json.dumps({"event_id": "no-image"}).encode())
    r = rig(watchlist, {0: values[:5], 1: values[5:]}, threaded=threaded)
    r.step_until_committed(len(values))

    rows = {row["event_id"]: row for row in r.store.events()}
    assert len(rows) == len(values)
    failed = {k: v for k, v in rows.items() if v["status"] == "failed"}
    assert failed["no-image"]["error"].startswith("schema:")
    assert failed["unparsed:uploads/0/3"]["error"].startswith("bad_json:")
    # Stored numbers are exactly the offline scores of the same images.
    attributions = {(a["event_id"], a["model"]): a for a in r.store.attributions()}
    for i, image in enumerate(images):
        assert rows[f"e{i}"]["status"] == "scored"
        for entry in watchlist.entries:
            offline = score_images(entry.model, [image])[0]
            stored = attributions[(f"e{i}", entry.name)]
            assert stored["score"] == pytest.approx(offline.score, rel=1e-4)  # batch of 4 vs 1
            assert stored["belongs"] == (offline.score < entry.threshold)
    # One alert per event with a match; best_match is the lowest score/threshold.
    alerts = [json.loads(m.value) for m in r.published("alerts")]
    matched = {e for (e, _), a in attributions.items() if a["belongs"]}
    assert {a["event_id"] for a in alerts} == matched and matched
    for alert in alerts:
        ratios = {m["model"]: m["score"] / m["threshold"] for m in alert["matches"]}
        assert alert["best_match"]["model"] == min(ratios, key=ratios.get)
        assert rows[alert["event_id"]]["best_match"] == alert["best_match"]["model"]
        assert alert["metadata"] == {"n": alert["event_id"]}
    # Dead letters carry the original bytes and key, and the reason in headers.
    dlq = r.published("dlq")
    assert {m.value for m in dlq} == {b"{broken json", json.dumps({"event_id": "no-image"}).encode()}
    assert sorted(dict(m.headers)["aedr.reason"] for m in dlq) == [b"bad_json", b"schema"]
    assert {m.key for m in dlq} == {b"k0-3", b"k1-0"}
    # Everything committed, to the end of each partition.
    assert {tp: o for (g, tp), o in r.broker.committed.items()} == {P0: 5, P1: 4}
    assert r.sample("aedr_events_total", outcome="scored") == 7
    assert r.sample("aedr_events_total", outcome="dead_lettered") == 2
    assert r.sample("aedr_dlq_total", reason="bad_json") == 1
    assert r.sample("aedr_alerts_total") == len(matched)


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "threaded"])
def test_no_commit_until_stored_then_retry_succeeds_with_backoff(watchlist, threaded):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(4, 32, 32, seed=3))]
    r = rig(watchlist, {0: values}, store=MemoryStore(fail_next=3), threaded=threaded)
    for _ in range(3):  # three failed saves, each after the backoff of the previous one
        before = r.store.fail_next
        while r.store.fail_next == before:
            r.worker.step()
            r.clock.advance(0.1)
    assert r.consumer.commits == [] and r.health.ready() is False  # nothing committed, not ready
    r.step_until_committed(4, between=lambda: r.clock.advance(0.1))
    assert r.broker.committed[("g", P0)] == 4
    assert r.store.count_events() == 4 and r.store.saves == 1
    assert r.sample("aedr_store_errors_total") == 3 and r.health.ready() is True


def test_backoff_doubles_is_capped_and_never_overflows():
    retry = RetrySettings(initial_s=0.5, max_s=10.0)
    assert [retry.delay(a) for a in (1, 2, 3, 4, 5, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert retry.delay(10**6) == 10.0  # 2 ** (10**6 - 1) would overflow a float


def test_a_partial_batch_waits_max_wait_ms_of_clock_time(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(2, 32, 32, seed=12))]
    r = rig(watchlist, {0: values}, max_size=4, max_wait_ms=50)
    received = r.clock.monotonic()
    started_at = []  # clock time (since receipt) when the batch went to the scorer
    submit = r.worker.scoring.submit
    r.worker.scoring.submit = lambda items: (started_at.append(r.clock.monotonic() - received), submit(items))[1]
    for _ in range(100):
        r.worker.step()  # the first polls both events: fewer than max_size, so they wait
        if r.worker.committed_events:
            break
    assert r.worker.committed_events == 2 and len(started_at) == 1
    assert 0.050 - 1e-9 <= started_at[0] <= 0.052  # not before the wait was over; idle polls wait until it is due


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "threaded"])
def test_unacknowledged_alerts_block_the_commit(watchlist, threaded):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(8, 32, 32, seed=4))]
    r = rig(watchlist, {0: values}, max_size=8, threaded=threaded)
    producer = r.broker.producer()
    producer.fail_next = 1
    r.worker.completion.producers = ProducerSlot(lambda: producer)
    r.step_until_committed(8, between=lambda: r.clock.advance(1.0))
    assert producer.fail_next == 0  # the first publish really failed …
    assert len(r.consumer.commits) == 1  # … and that attempt committed nothing
    assert r.store.saves == 1  # stored once, not again on the retry
    assert r.published("alerts")


@pytest.mark.parametrize("store_beside, store_s, kinds", [
    ("always", 0.0, ["score", "score", "store", "score", "store", "store"]),
    ("never", 30.0, ["score", "store", "score", "store", "score", "store"]),
    ("auto", 0.0, ["score", "store", "score", "store", "score", "store"]),  # a quick store: between batches
    ("auto", 30.0, ["score", "store", "score", "score", "store", "store"]),  # a slow one: beside, once measured
])
def test_the_store_runs_beside_the_next_scoring_only_when_chosen_and_commits_stay_in_order(
        watchlist, store_beside, store_s, kinds):
    """A far database does not set the pace: once a store is seen to be slow, the store of one
    batch runs beside the scoring of the next (worker.overlap). A quick one runs between
    batches. Either way offsets are committed batch by batch, in order, after each store."""
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(12, 32, 32, seed=21))]
    order = []
    store = MemoryStore()
    save, submit = store.save, None
    clocks = []

    def logged_save(rows, *args, **kwargs):
        order.append(("store", [r.event_id for r in rows]))
        clocks[0].advance(store_s)  # the database's round trips, on the worker's clock
        return save(rows, *args, **kwargs)

    store.save = logged_save
    r = rig(watchlist, {0: values}, store=store, threaded=True, max_size=4, max_buffered=12, store_beside=store_beside)
    clocks.append(r.clock)
    submit = r.worker.scoring.submit
    r.worker.scoring.submit = lambda items: (order.append(("score", [w.message.offset for w in items])), submit(items))[1]
    r.step_until_committed(12)
    assert [kind for kind, _ in order] == kinds
    assert [ids for kind, ids in order if kind == "store"] == [[f"e{i}" for i in range(k, k + 4)] for k in (0, 4, 8)]
    assert [c[P0] for c in r.consumer.commits] == [4, 8, 12]


def test_batches_are_bounded_and_partitions_pause_when_full(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(20, 32, 32, seed=5))]
    r = rig(watchlist, {0: values}, max_size=4, max_buffered=6)
    r.step_until_committed(20)
    assert r.consumer.pause_calls >= 1
    assert all(list(c) == [P0] for c in r.consumer.commits)
    offsets = [c[P0] for c in r.consumer.commits]
    assert offsets == sorted(offsets) and offsets[-1] == 20
    assert all(b - a <= 4 for a, b in zip([0] + offsets, offsets))  # no batch above max_size


@pytest.mark.parametrize("inflight", [1, 2])
def test_serial_mode_leaves_the_model_alone_and_loses_nothing(watchlist, inflight):
    """inflight = 1 (the CPU default): the loop waits for a batch's scoring before it polls
    again, so nothing runs beside the model's threads; with 2 it polls while a batch waits for
    the model. The scoring thread here advances only when the loop waits on it (serial) or,
    with 2, one task after each turn of the loop."""
    images = random_images(16, 32, 32, seed=8)
    executor = ManualExecutor()
    r = rig(watchlist, {0: [event(f"e{i}", im) for i, im in enumerate(images)]}, executor=executor,
            max_size=4, max_buffered=8, inflight=inflight)
    pending_at_poll = []
    poll = r.consumer.poll
    r.consumer.poll = lambda *a, **k: (pending_at_poll.append(len(executor.pending)), poll(*a, **k))[1]
    r.step_until_committed(16, between=(lambda: None) if inflight == 1 else executor.run_next)
    r.worker.drain()
    assert r.store.count_events() == 16 and r.broker.committed[("g", P0)] == 16
    if inflight == 1:
        assert executor.waits >= 4 and max(pending_at_poll) == 0
    else:
        assert max(pending_at_poll) > 0


def two_scorers(watchlist, n: int, seed: int, turns: int) -> tuple[Rig, ManualExecutor, ManualExecutor]:
    """A worker with two CPU scorers that run only when the test says, after `turns` turns of
    the loop (each batch of 4 handed to a scorer by then)."""
    first, second = ManualExecutor(), ManualExecutor()
    r = rig(watchlist, {0: [event(f"e{i}", im) for i, im in enumerate(random_images(n, 32, 32, seed=seed))]},
            scorers=[first, second], max_size=4, max_buffered=n)
    for _ in range(turns):
        r.worker.step()
        r.clock.advance(0.1)
    return r, first, second


def test_a_scorer_that_finishes_first_takes_the_next_batch_while_the_head_is_still_scored(watchlist):
    """Two CPU scorers: while the oldest batch is still being scored, the other scorer's batch
    finishes, and that scorer starts the next batch at once (completion still waits for the
    head, so commits stay in order). At most two batches per scorer are held."""
    r, first, second = two_scorers(watchlist, 24, seed=9, turns=3)
    assert (len(first.pending), len(second.pending)) == (1, 1)  # one batch per scorer
    for _ in range(3):  # the head (on `first`) stays unscored; `second` finishes each batch it gets
        assert second.run_next()
        r.worker.step()
        r.clock.advance(0.1)
    # the second scorer has taken a new batch each time; the loop holds 4 batches (2 per
    # scorer) and waits for the head before it takes more
    assert len(first.pending) == 1 and len(r.worker._inflight) == 4
    assert not second.pending and r.worker.committed_events == 0
    while first.run_next() or second.run_next():
        r.worker.step()
    r.step_until_committed(24, between=lambda: first.run_all() or second.run_all())
    assert r.store.count_events() == 24
    offsets = [c[P0] for c in r.consumer.commits]
    assert offsets == sorted(offsets) and offsets[-1] == 24


def test_waiting_on_hung_scorers_adds_nothing_turn_after_turn(watchlist):
    """While two scorers hang, each turn waits on the first of them to finish; the future it
    waits on is made once, not once a turn (each one leaves a callback on every scoring)."""
    r, first, second = two_scorers(watchlist, 8, seed=10, turns=5)
    scorings = [b.scored for b in r.worker._inflight]
    assert len(scorings) == 2 and not any(f.done() for f in scorings)
    callbacks = [len(f._done_callbacks) for f in scorings]
    for _ in range(200):
        r.worker.step()
    assert [len(f._done_callbacks) for f in scorings] == callbacks
    first.run_all(), second.run_all()
    r.step_until_committed(8, between=lambda: first.run_all() or second.run_all())


def test_the_pool_gives_a_batch_to_the_least_busy_scorer(watchlist):
    first, second, third = ManualExecutor(), ManualExecutor(), ManualExecutor()
    pool = ScoringPool([watchlist] * 3, lambda m, s: None, executors=[first, second, third])
    futures = [pool.submit([]) for _ in range(3)]
    assert pool.queued() == (1, 1, 1)
    second.run_next()  # its batch finishes (with an error here: nothing to prepare)
    assert futures[1].done() and pool.queued() == (1, 0, 1)
    pool.submit([])
    assert pool.queued() == (1, 1, 1) and len(second.pending) == 1
    pool.submit([]), pool.submit([])
    assert pool.queued() == (2, 1, 2)  # among equals, the next in turn after the last chosen


def test_a_partition_that_moves_is_not_committed_and_nothing_is_dropped(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(12, 32, 32, seed=6))]
    r = rig(watchlist, {0: values[:6], 1: values[6:]}, max_size=4, max_buffered=12)
    r.worker.step()  # the first events are fetched from both partitions
    r.consumer.revoke([P1])  # p1 moves to another worker …
    r.step_until_committed(12)
    assert r.store.count_events() == 12  # … everything fetched is still stored (idempotently) …
    assert ("g", P1) not in r.broker.committed  # … but only the new owner commits p1
    assert r.broker.committed[("g", P0)] == 6


def test_hostile_events_get_their_specific_reasons(watchlist):
    """A slice of the hostile corpus through the prepare stage (the integration test sends
    ≥ 10 000 through a real worker)."""
    from tests.hostile import SCORED, corpus

    fetcher = Fetcher(FetchSettings(), 1 << 20)
    wrong = []
    for i, item in enumerate(corpus(n=1400, seed=3, oversized_mb=2)):
        prepared = prepare(Message("uploads", 0, i, b"k", item.value), fetcher, ImageSettings(max_bytes=1 << 20),
                           watchlist.prepare)
        got = SCORED if prepared.image is not None else prepared.rejection.reason
        if got not in item.expected.split("|"):
            wrong.append((item.cls, item.expected, got, str(prepared.rejection)[:100]))
    assert not wrong, wrong[:5]


class Fragile:
    """The watchlist, but it raises on images of one shape (or on everything, when broken)."""

    def __init__(self, inner: Watchlist, poison_side: int = 40, broken: bool = False):
        self.inner, self.poison_side, self.broken = inner, poison_side, broken
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score(self, items):
        self.calls += 1
        if self.broken or any(item.crops[0][0].shape[0] == self.poison_side for item in items):  # model 0, tile 0
            raise RuntimeError("model crashed")
        return self.inner.score(items)

    def probe(self):
        if self.broken:
            raise RuntimeError("model crashed")
        self.inner.probe()


def test_an_image_that_crashes_the_model_is_isolated_and_the_rest_scored(watchlist):
    images = random_images(6, 32, 32, seed=21)
    poison = random_images(1, 40, 40, seed=22)[0]  # its shape marks it for the failing scorer
    values = [event(f"e{i}", im) for i, im in enumerate(images)]
    values.insert(2, event("poison", poison))
    r = rig(watchlist, {0: values}, scorer=Fragile(watchlist), max_size=8)
    r.step_until_committed(len(values))
    rows = {row["event_id"]: row for row in r.store.events()}
    assert rows["poison"]["status"] == "failed" and rows["poison"]["error"].startswith("internal: scoring failed")
    assert all(rows[f"e{i}"]["status"] == "scored" for i in range(6))
    assert [dict(m.headers)["aedr.reason"] for m in r.published("dlq")] == [b"internal"]
    assert r.broker.committed[("g", P0)] == 7
    assert r.sample("aedr_dlq_total", reason="internal") == 1


def test_models_that_fail_on_everything_are_our_fault_not_the_images(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(4, 32, 32, seed=23))]
    fragile = Fragile(watchlist, broken=True)
    r = rig(watchlist, {0: values}, scorer=fragile, max_size=4)
    for _ in range(20):
        r.worker.step()
        r.clock.advance(0.5)
    assert r.store.count_events() == 0 and r.published("dlq") == [] and r.consumer.commits == []
    assert r.health.ready() is False and r.sample("aedr_ready") == 0
    assert fragile.calls > 3  # retried with backoff, not given up on
    assert r.sample("aedr_faulted", cause="models") == 1 and r.worker.fault is None
    fragile.broken = False  # the device comes back
    r.step_until_committed(4, between=lambda: r.clock.advance(1.0))
    assert r.health.ready() is True and {row["status"] for row in r.store.events()} == {"scored"}
    assert r.sample("aedr_faulted", cause="models") == 0


def test_models_unavailable_for_too_long_stop_the_worker_for_a_restart(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(4, 32, 32, seed=23))]
    r = rig(watchlist, {0: values}, scorer=Fragile(watchlist, broken=True), max_size=4,
            guard=GuardSettings(fault_exit_s=60.0))
    r.worker.run(until=lambda: (r.clock.advance(1.0), r.clock.monotonic() > 2000)[1])  # stops long before
    assert r.worker.stop.is_set() and r.worker.fault and r.worker.fault.startswith("models")
    assert 60.0 <= r.clock.monotonic() - 1000.0 < 200.0
    assert r.consumer.commits == [] and r.store.count_events() == 0 and r.published("dlq") == []


def test_the_dead_letter_guard_holds_a_flood_when_it_is_on(watchlist):
    good = [event(f"e{i}", im) for i, im in enumerate(random_images(8, 32, 32, seed=25))]
    garbage = [b"{not json"] * 8
    guard = GuardSettings(fault_exit_s=0, dead_letter_fraction=0.5, dead_letter_window=8)
    r = rig(watchlist, {0: good + garbage}, max_size=4, guard=guard)
    for _ in range(60):
        r.worker.step()
        r.clock.advance(0.5)
    # Batches of 4: good, good, bad (the last 8 are half dead: not over 0.5), bad (all 8: held).
    assert r.broker.committed[("g", P0)] == 12
    assert r.sample("aedr_faulted", cause="dead_letters") == 1
    assert len(r.published("dlq")) == 4 and r.health.ready() is False
    off = rig(watchlist, {0: good + garbage}, max_size=4)  # off by default: bad input is dead-lettered
    off.step_until_committed(16)
    assert len(off.published("dlq")) == 8 and off.sample("aedr_faulted", cause="dead_letters") == 0


def test_rows_the_database_refuses_are_isolated_and_dead_lettered(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(8, 32, 32, seed=26))]
    store = MemoryStore(refuse=lambda o: o.event_id == "e5" and o.status == "scored")
    r = rig(watchlist, {0: values}, store=store, max_size=8)
    r.step_until_committed(8)
    rows = {row["event_id"]: row for row in store.events()}
    assert rows["e5"]["status"] == "failed" and rows["e5"]["error"].startswith("internal: could not be stored: ValueError")
    assert all(rows[f"e{i}"]["status"] == "scored" for i in range(8) if i != 5)
    assert [dict(m.headers)["aedr.reason"] for m in r.published("dlq")] == [b"internal"]
    assert not any(json.loads(m.value)["event_id"] == "e5" for m in r.published("alerts"))
    assert r.broker.committed[("g", P0)] == 8 and r.sample("aedr_dlq_total", reason="internal") == 1


def test_a_record_the_broker_refuses_as_too_large_is_published_without_its_payload(watchlist):
    images = random_images(6, 32, 32, seed=27)
    big = upload_event("big", images[0], metadata={"note": "é" * 300_000})
    values = [big, b"{" + b"x" * 300_000] + [event(f"e{i}", im) for i, im in enumerate(images[1:])]
    r = rig(watchlist, {0: values}, max_size=8, producer_factory=lambda: r.broker.producer(max_request_size=100_000))
    r.step_until_committed(len(values), between=lambda: r.clock.advance(1.0))
    dead = r.published("dlq")
    assert len(dead) == 1 and dead[0].value is None
    assert dict(dead[0].headers)["aedr.value_dropped"] == str(300_001).encode()
    assert dict(dead[0].headers)["aedr.source"] == b"uploads/0/1"
    assert r.broker.committed[("g", P0)] == len(values)


def test_an_alert_refused_as_too_large_keeps_everything_but_the_metadata():
    from worker.messages import Outbound
    from worker.outcomes import shrink

    alert = {"schema_version": 1, "event_id": "e", "matches": [{"model": "m", "score": 0.5, "threshold": 1.0}],
             "best_match": {"model": "m", "score": 0.5, "threshold": 1.0}, "scored_at": "t",
             "metadata": {"a": "x" * 1000, "b": 2}}
    small = shrink(Outbound("alerts", b"e", json.dumps(alert).encode()), dead_letter=False)
    got = json.loads(small.value)
    assert {k: v for k, v in got.items() if k != "metadata"} == {k: v for k, v in alert.items() if k != "metadata"}
    assert got["metadata"] == {"_aedr_truncated": {"keys": ["a", "b"], "original_bytes": len(json.dumps(alert["metadata"]))}}
    assert small.key == b"e"


def test_oversized_alert_metadata_is_cut_to_fit_and_marked():
    from worker.decision import Match
    from worker.events import UploadEvent
    from worker.outcomes import fitted_alert

    event = UploadEvent("e", image_b64="AAAA", metadata={"a": 1, "b": "é" * 10_000, "c": [1] * 5000, "d": "x"})
    value = fitted_alert(event, [Match("m", 0.5, 1.0)], Match("m", 0.5, 1.0), "2026-11-28T00:00:00.000Z", 8_000)
    alert = json.loads(value)
    assert len(value) <= 8_000
    assert alert["metadata"]["a"] == 1 and alert["metadata"]["b"].startswith("éé")
    assert alert["metadata"]["_aedr_truncated"]["keys"] == ["b", "c", "d"][: len(alert["metadata"]["_aedr_truncated"]["keys"])]
    assert "b" in alert["metadata"]["_aedr_truncated"]["keys"]
    small = fitted_alert(UploadEvent("e", image_b64="AAAA", metadata={"a": 1}), [Match("m", 0.5, 1.0)],
                         Match("m", 0.5, 1.0), "2026-11-28T00:00:00.000Z", 8_000)
    assert json.loads(small)["metadata"] == {"a": 1}


def test_drain_is_bounded_even_with_a_hung_scorer(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(4, 32, 32, seed=24))]
    executor = ManualExecutor(hung=True)
    r = rig(watchlist, {0: values}, executor=executor, max_size=4)
    executor.clock = r.clock  # waiting on the hung scorer takes clock time
    r.worker.step()
    r.clock.advance(0.1)
    r.worker.step()  # the batch goes to the (hung) scorer
    started = r.clock.monotonic()
    r.worker.drain()
    assert r.clock.monotonic() - started <= r.worker.drain_s + 1.5
    assert r.consumer.commits == [] and r.store.count_events() == 0


def test_a_producer_that_keeps_failing_is_replaced(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(8, 32, 32, seed=4))]
    r = rig(watchlist, {0: values}, max_size=8)
    broken = r.broker.producer()
    broken.fail_next = 10**9  # a producer in a fatal state: every send fails
    fresh = r.broker.producer()
    queue = [broken, fresh]
    r.worker.completion.producers = ProducerSlot(lambda: queue.pop(0))
    r.step_until_committed(8, between=lambda: r.clock.advance(1.0))
    assert broken.closed and not fresh.closed and fresh.published
    assert r.broker.committed[("g", P0)] == 8


def test_lag_gauge_drops_partitions_that_moved(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(4, 32, 32, seed=9))]
    r = rig(watchlist, {0: values[:2], 1: values[2:]})
    r.step_until_committed(4)
    r.worker.step()

    def labels():
        return {s.labels["partition"] for f in r.metrics.registry.collect() for s in f.samples
                if s.name == "aedr_consumer_lag"}

    assert labels() == {"0", "1"}
    r.consumer.revoke([P1])  # partition 1 moved to another worker
    r.worker.step()
    assert labels() == {"0"}


def test_dead_letter_reasons_are_a_closed_set():
    assert {r.value for r in Reason} == {"bad_json", "schema", "fetch", "decode", "too_large", "internal"}


def lag_of(r: Rig) -> dict[int, float]:
    return {int(s.labels["partition"]): s.value for f in r.metrics.registry.collect() for s in f.samples
            if s.name == "aedr_consumer_lag"}


def test_lag_is_the_broker_end_minus_the_commit_even_while_paused(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(6, 32, 32, seed=30))] * 5  # 30 events
    r = rig(watchlist, {0: values}, max_size=4, max_buffered=4)
    for _ in range(3):
        r.worker.step()
    assert P0 in r.consumer.paused  # a backlog: the partition is paused, its high-water mark stale
    for i in range(10):  # more arrive while it is paused
        r.broker.produce("uploads", values[i], partition=0)
    r.worker.lag.update(force=True)
    committed = r.broker.committed.get(("g", P0), 0)
    assert lag_of(r) == {0: 40 - committed}
    assert r.sample("aedr_group_lag", topic="uploads") == 40 - committed
    assert r.sample("aedr_assigned_partitions") == 1
    r.step_until_committed(40)
    r.worker.lag.update(force=True)
    assert lag_of(r) == {0: 0}


def test_finished_work_is_committed_before_a_partition_moves(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(8, 32, 32, seed=31))]
    r = rig(watchlist, {0: values[:4], 1: values[4:]}, max_size=8)
    r.consumer.fail_commits = 10**6  # the group refuses commits (a rebalance is brewing) …
    r.step_until_committed(8)  # (the batch is finished: stored and published)
    assert r.broker.committed == {} and r.store.count_events() == 8
    r.consumer.fail_commits = 0
    r.consumer.revoke([P1])  # … then P1 moves: its finished work is committed first
    assert r.broker.committed == {("g", P1): 4}
    r.worker.step()  # and the commit that was refused for P0 goes through on the next turns
    r.clock.advance(1.5)
    r.worker.step()
    assert r.broker.committed == {("g", P1): 4, ("g", P0): 4}


def test_a_worker_without_partitions_while_the_topic_waits_leaves_for_a_restart(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(4, 32, 32, seed=32))]
    r = rig(watchlist, {0: values}, max_size=4, guard=GuardSettings(unassigned_exit_s=60))
    r.consumer.revoke([P0])  # the group gave this worker nothing, and the events wait
    for _ in range(20):
        r.worker.step()
        r.clock.advance(1.0)
    assert r.worker.fault is None and r.health.alive()
    r.worker.run(until=lambda: (r.clock.advance(5.0), r.clock.monotonic() > 5000)[1])
    assert r.worker.fault and "no partition assigned" in r.worker.fault
    assert r.health.alive() is False and r.sample("aedr_assigned_partitions") == 0
    assert r.sample("aedr_group_lag", topic="uploads") == 4


def test_liveness_fails_when_work_waits_and_nothing_finishes(watchlist):
    values = [event(f"e{i}", im) for i, im in enumerate(random_images(4, 32, 32, seed=33))]
    executor = ManualExecutor(hung=True)
    r = rig(watchlist, {0: values}, executor=executor, max_size=4, guard=GuardSettings(stall_s=30))
    executor.clock = r.clock
    r.worker.step()
    r.clock.advance(0.1)
    r.worker.step()  # the batch is with the (stuck) device
    assert r.health.alive()
    for _ in range(40):
        r.worker.step()  # each turn waits 1 s of clock time on the stuck scorer
    assert r.health.alive() is False
    idle = rig(watchlist, {0: []}, guard=GuardSettings(stall_s=30))
    for _ in range(50):
        idle.worker.step()
        idle.clock.advance(1.0)
    assert idle.health.alive()  # nothing to do is not stuck


def test_records_the_client_cannot_decode_pause_that_partition_only(watchlist):
    from worker.messages import UndecodableRecords

    values = [event(f"e{i}", im) for i, im in enumerate(random_images(8, 32, 32, seed=34))]
    r = rig(watchlist, {0: values[:4], 1: values[4:]}, max_size=4, guard=GuardSettings(fault_exit_s=120))
    poll = r.consumer.poll

    def poll_failing_on_p1(timeout_ms, max_records):
        if P1 not in r.consumer.paused and r.consumer.position[P1] == 2:
            raise UndecodableRecords(P1, 2, "UnsupportedCodecError: Libraries for snappy not found")
        out = poll(timeout_ms, max_records)
        if any(m.tp == P1 and m.offset >= 2 for m in out):  # the client stops at the bad batch
            r.consumer.position[P1] = 2
            out = [m for m in out if not (m.tp == P1 and m.offset >= 2)]
        return out

    r.consumer.poll = poll_failing_on_p1
    for _ in range(30):
        r.worker.step()
        r.clock.advance(1.0)
    assert r.broker.committed == {("g", P0): 4, ("g", P1): 2}  # P0 went on; P1 up to the bad batch
    assert P1 in r.consumer.paused and r.sample("aedr_faulted", cause="input") == 1
    assert r.worker.fault is None
    r.worker.run(until=lambda: (r.clock.advance(5.0), r.clock.monotonic() > 5000)[1])
    assert r.worker.fault and "snappy" in r.worker.fault  # held too long: stops for a restart
    assert r.broker.committed[("g", P1)] == 2  # nothing skipped
