"""Reloading the watchlist in the loop, and reading a window of a topic, on the in-memory broker
and clock (the same run against the real broker and Postgres in
tests/integration/test_watchlist_over_time.py)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from tests.conftest import random_images
from tests.unit.test_pipeline import P0, event, rig, watchlist  # noqa: F401 (a fixture)
from worker.config import FetchSettings, ImageSettings, Settings, WatchlistEntry
from worker.errors import AedrError
from worker.fetch import Fetcher
from worker.metrics import Metrics
from worker.prepare import prepare
from worker.reload import Reloader
from worker.scoring_pool import ScoringPool
from worker.testing import FakeBroker, FakeClock, InlineExecutor
from worker.watchlist import Watchlist
from worker.window import Window


def pool_of(scorer) -> ScoringPool:
    fetcher = Fetcher(FetchSettings(), 10**7)
    return ScoringPool([scorer], lambda m, s: prepare(m, fetcher, ImageSettings(), s.prepare),
                       executors=[InlineExecutor()])


def test_the_config_file_changing_or_a_sighup_asks_for_a_reload(tmp_path):
    path = tmp_path / "worker.toml"
    path.write_text("[batch]\nmax_size = 4\n")
    clock, requested, metrics = FakeClock(), threading.Event(), Metrics(CollectorRegistry())
    loads = []
    reloader = Reloader(path, Settings(), requested, clock, metrics, lambda s: loads.append(s) or "pool",
                        check_interval_s=5)
    assert not reloader.wanted()
    path.write_text("[batch]\nmax_size = 8\n")
    assert not reloader.wanted()  # looked at again only after the interval
    clock.advance(5)
    assert reloader.wanted()
    assert reloader.load() == "pool" and loads[0].batch.max_size == 8 and not reloader.wanted()
    requested.set()  # SIGHUP
    assert reloader.wanted()


def test_a_reload_that_fails_keeps_the_old_watchlist_and_is_counted(tmp_path):
    path = tmp_path / "worker.toml"
    path.write_text("")
    metrics = Metrics(CollectorRegistry())

    def refuse(settings):
        raise AedrError("calibration for sd15 was fitted on weights ab…; recalibrate")

    reloader = Reloader(path, Settings(), threading.Event(), FakeClock(), metrics, refuse)
    assert reloader.load() is None
    samples = {s.labels["outcome"]: s.value for f in metrics.registry.collect() for s in f.samples
               if s.name == "aedr_reloads_total"}
    assert samples == {"ok": 0, "failed": 1}


def test_the_loop_finishes_in_flight_work_then_scores_with_the_new_watchlist(watchlist):  # noqa: F811
    alpha_only = Watchlist(watchlist.entries[:1], batch_size=8)
    images = random_images(12, 32, 32, seed=50)
    r = rig(alpha_only, {0: [event(f"e{i}", im) for i, im in enumerate(images)]}, max_size=4, max_buffered=8)
    requested = threading.Event()
    r.worker.reloader = Reloader(None, Settings(), requested, r.clock, r.metrics, lambda s: pool_of(watchlist))
    r.worker.step()  # the first batch (e0–e3) goes to the scorer; e4–e7 wait in the buffer
    assert r.worker.committed_events == 0
    requested.set()  # the batch in flight finishes with the old watchlist; what waits, with the new
    r.step_until_committed(12)
    models = {}
    for row in r.store.attributions():
        models.setdefault(row["event_id"], set()).add(row["model"])
    first = {f"e{i}" for i in range(4)}
    assert all(models[e] == {"alpha"} for e in first)
    later = [e for e in models if e not in first]
    assert len(later) == 8 and all(models[e] == {"alpha", "beta"} for e in later)  # nothing scored twice
    assert r.store.count_events() == 12 and r.broker.committed[("g", P0)] == 12


def test_a_window_reads_the_records_between_two_times_as_the_topic_stood():
    clock = FakeClock(start=0.0)
    broker = FakeBroker(clock=clock)
    broker.create_topic("t", 2)
    stamps = []
    for i in range(10):  # one record a second, alternating partitions
        stamps.append(int(clock.time() * 1000))
        broker.produce("t", f"v{i}".encode(), partition=i % 2)
        clock.advance(1.0)
    reader = broker.consumer("t", "g.rescan")
    window = Window(reader, "t", since_ms=stamps[3], until_ms=None, opened_ms=int(clock.time() * 1000))
    broker.produce("t", b"later", partition=0)  # after the window opened: not its business
    got = []
    for _ in range(10):
        got += window.poll(timeout_ms=100, max_records=3)
        if window.finished():
            break
    assert window.finished()
    assert sorted(m.value for m in got) == [f"v{i}".encode() for i in range(3, 10)]
    assert window.total == 7


def test_records_older_than_since_are_skipped_when_the_broker_cannot_look_them_up():
    clock = FakeClock(start=0.0)
    broker = FakeBroker(clock=clock)
    broker.create_topic("t", 1)
    stamps = []
    for i in range(6):
        stamps.append(int(clock.time() * 1000))
        broker.produce("t", f"v{i}".encode(), partition=0)
        clock.advance(1.0)
    reader = broker.consumer("t", "g")
    reader.start_offsets = lambda partitions, since_ms: {tp: 0 for tp in partitions}  # as Tansu answers
    window = Window(reader, "t", since_ms=stamps[2], until_ms=stamps[4], opened_ms=int(clock.time() * 1000))
    got = []
    while not window.finished():
        got += window.poll(timeout_ms=100, max_records=10)
    assert [m.value for m in got] == [b"v2", b"v3"] and window.skipped == 2


def test_watchlist_entries_can_be_shadow_or_off(tmp_path):
    import pytest

    from worker.config import ConfigError, load_settings

    path = tmp_path / "w.toml"
    entry = '[[watchlist]]\nname = "{name}"\nmodel = "m"\ncalibration = "c"\nmode = "{mode}"\n'
    path.write_text(entry.format(name="a", mode="shadow") + entry.format(name="b", mode="off"))
    assert [w.mode for w in load_settings(path, {}).watchlist] == ["shadow", "off"]
    path.write_text(entry.format(name="a", mode="loud"))
    with pytest.raises(ConfigError, match=r"watchlist\[0\]\.mode: 'loud' is not one of alert, shadow, off"):
        load_settings(path, {})
    assert WatchlistEntry("a", "m", "c").mode == "alert"
