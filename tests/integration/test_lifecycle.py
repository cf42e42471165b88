"""Starting and stopping `aedr serve` at any moment, on the real broker and Postgres: SIGTERM
during start-up exits 0; a worker stopped right after it became ready leaves no stuck group; and
in a storm of joins and leaves, redeliveries stay within one in-flight batch per revoked
partition per rebalance."""

from __future__ import annotations

import os
import re
import signal
import time

from tests.integration.conftest import (
    Produced,
    ServeLauncher,
    assert_nothing_lost_or_duplicated,
    delivery,
    http_status,
    make_corpus,
    produce,
    record,
    wait_for,
)
from worker.storage import SqlStore

MODELS = ["kl-f4c4"]


def ready(port: int) -> bool:
    try:
        return http_status(port, "/readyz") == 200
    except OSError:
        return False


def test_sigterm_at_any_moment_of_start_up_exits_0(broker, pg_url, tmp_path):
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, MODELS)
    produce(broker.bootstrap, dep.topic, make_corpus(MODELS, per_model=4, real=4, seed=41, with_broken=False))
    try:  # (the handler is installed before any slow import; a signal before Python has started
        # cannot be handled, and then nothing has been done either)
        for moment in ("metrics on", "watchlist:", "(Re-)joining group", "assigned"):
            serve = dep.start()
            wait_for(lambda: moment in serve.log() or serve.proc.poll() is not None, 120, f"'{moment}' in the log")
            serve.proc.send_signal(signal.SIGTERM)
            assert serve.proc.wait(timeout=60) == 0, (moment, serve.log()[-2000:])
    finally:
        dep.stop_all()


def test_a_stop_right_after_readiness_leaves_no_stuck_group(broker, pg_url, tmp_path):
    corpus = make_corpus(MODELS, per_model=10, real=10, seed=42, with_broken=False)
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, MODELS)
    store = SqlStore.from_url(pg_url)
    try:
        first = dep.start()
        wait_for(lambda: ready(first.metrics_port), 120, "the first worker to be ready", diagnostics=dep.logs)
        time.sleep(0.5)  # its group join is still under way
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=60) == 0, first.log()[-2000:]
        produce(broker.bootstrap, dep.topic, corpus)
        started = time.monotonic()
        second = dep.start()
        wait_for(lambda: store.count_events() == len(corpus.values), 90, "the next worker to store every event",
                 diagnostics=dep.logs)
        assert second.proc.poll() is None
        record({"fault": "SIGTERM 0.5 s after readiness, then a new worker", "trials": 1, "restarts": 1,
                "seconds_to_store_all_after_the_new_start": round(time.monotonic() - started, 1),
                "produced": len(corpus.values), "stored": store.count_events()})
    finally:
        dep.stop_all()
        store.close()


def test_a_storm_of_joins_and_leaves_redelivers_at_most_the_in_flight_batches(broker, pg_url, tmp_path):
    """Two steady workers; a third joins and leaves (SIGTERM) several times and is killed once,
    while events flow. Every event is stored once; an event is processed twice only when its
    batch was in flight in a partition that moved, or in the killed worker."""
    cycles = int(os.environ.get("AEDR_STORM_CYCLES", "3"))
    corpus = make_corpus(MODELS, per_model=30 * (cycles + 1), real=20 * (cycles + 1), seed=43, with_broken=False)
    n = len(corpus.values)
    waves = [slice(round(i * n / (cycles + 2)), round((i + 1) * n / (cycles + 2))) for i in range(cycles + 2)]
    max_size = 4
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, MODELS, max_size=max_size)
    store = SqlStore.from_url(pg_url)
    produced = Produced()
    kills = 0
    try:
        produce(broker.bootstrap, dep.topic, corpus, waves[0], produced)
        dep.start()
        dep.start()
        wait_for(lambda: store.count_events() >= 8, 120, "the steady workers to score", diagnostics=dep.logs)
        for i in range(cycles + 1):
            produce(broker.bootstrap, dep.topic, corpus, waves[i + 1], produced)
            guest = dep.start()
            wait_for(lambda: re.search(r"assigned [1-9]", guest.log()), 120, "the guest to get partitions",
                     diagnostics=dep.logs)
            time.sleep(1.0)
            if i == cycles:  # the last guest is killed: the only way to lose a finished batch's commit
                guest.proc.send_signal(signal.SIGKILL)
                kills += 1
                guest.proc.wait(timeout=30)
            else:
                guest.proc.send_signal(signal.SIGTERM)
                assert guest.proc.wait(timeout=60) == 0, guest.log()[-2000:]
        wait_for(lambda: store.count_events() == n, 300, "every event", diagnostics=dep.logs)
        figures = delivery(store, broker.bootstrap, dep, produced.positions, len(MODELS), produced.valid)
        assert_nothing_lost_or_duplicated(figures)
        revoked = sum(int(m) for p in dep.processes for m in re.findall(r"revoked (\d+) partition", p.log()))
        bound = max_size * (revoked + kills * 4)
        assert figures["processed_more_than_once"] <= bound, (figures, revoked)
        record({"fault": f"rebalance storm: {cycles} joins and leaves (SIGTERM), 1 SIGKILL", "trials": cycles + 1,
                "restarts": cycles + 1, "partitions_revoked": revoked, "redelivery_bound": bound, **figures})
    finally:
        dep.stop_all()
        store.close()
