"""Real services for integration tests: a Tansu broker on loopback (one per session: it never
frees message memory), and a fresh Postgres database per test, migrated with Alembic. The
harness itself (serve launcher, database, topics) is worker.harness, shared with the demo and
the benchmarks; the corpus is worker.corpus."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest

from worker.corpus import CorpusEvent, build_corpus
from worker.harness import ServeLauncher, committed_offsets, postgres_database, produce_values, read_topic, wait_for
from worker.kafka_io import LocalBroker

__all__ = ["Corpus", "ServeLauncher", "committed_offsets", "make_corpus", "produce", "produce_values", "read_topic",
           "record", "wait_for", "http_status", "assert_committed_work_is_stored", "delivery",
           "assert_nothing_lost_or_duplicated", "Produced"]

PG_ADMIN_URL = os.environ.get("AEDR_TEST_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with LocalBroker(log_path=log) as b:
        yield b


def _admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The Postgres server's URL without a database name; skips nothing: Postgres must run."""
    from sqlalchemy import text

    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # a missing service is a failure, not a skip
        pytest.fail(f"Postgres is not reachable at {PG_ADMIN_URL}: {exc}")
    finally:
        engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0]


@pytest.fixture
def pg_url(pg_server_url):
    """A fresh, migrated database for one test; dropped afterwards."""
    with postgres_database(pg_server_url, "aedr_it") as url:
        yield url


@dataclass
class Corpus:
    """A view of `worker.corpus.build_corpus`'s events, the way the tests read them."""

    events: list[CorpusEvent]

    @property
    def values(self) -> list[bytes]:
        return [e.value for e in self.events]

    @property
    def keys(self) -> list[bytes]:
        return [e.key for e in self.events]

    @property
    def images(self) -> dict[str, np.ndarray]:
        return {e.event_id: e.image for e in self.events if e.image is not None}

    @property
    def truth(self) -> dict[str, str]:
        return {e.event_id: e.truth for e in self.events if e.reason is None}

    @property
    def broken(self) -> dict[str, str]:
        """key → the dead-letter reason it must get"""
        return {e.event_id: e.reason for e in self.events if e.reason is not None}


def make_corpus(models: list[str], per_model: int, real: int, seed: int, with_broken: bool = True) -> Corpus:
    return Corpus(build_corpus(models, per_model, real, seed, broken=with_broken, prefix=f"{seed}-"))


@dataclass
class Produced:
    """Where the produced messages went, and which of them must be scored."""

    positions: list[tuple[int, int]] = field(default_factory=list)
    valid: set[tuple[int, int]] = field(default_factory=set)


def produce(bootstrap: str, topic: str, corpus: Corpus, part: slice = slice(None),
            produced: Produced | None = None) -> list[tuple[int, int]]:
    positions = produce_values(bootstrap, topic, corpus.values[part], corpus.keys[part])
    if produced is not None:
        produced.positions += positions
        produced.valid |= {p for e, p in zip(corpus.events[part], positions) if e.image is not None}
    return positions


def assert_committed_work_is_stored(store, bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The at-least-once invariant: below each partition's committed offset, every message has
    its events row. Returns the committed offsets."""
    committed = committed_offsets(bootstrap, group, topic)
    stored = {(r["partition"], r["offset"]) for r in store.events() if r["topic"] == topic}
    for partition, offset in committed.items():
        missing = [o for o in range(offset) if (partition, o) not in stored]
        assert not missing, f"partition {partition}: offsets {missing[:10]} committed but not stored"
    return committed


def delivery(store, bootstrap: str, launcher: ServeLauncher, positions: list[tuple[int, int]], models: int,
             valid: set[tuple[int, int]] | None = None, by_event_id: list[str] | None = None) -> dict:
    """What happened to every produced message, counted from the data, for the reliability
    record: rows per event and per (event, model), alerts and dead letters published against
    distinct, and offsets processed more than once (from the workers' `stored …` log lines).
    `positions` are the produced (partition, offset)s; `valid` those that must be scored. With
    `by_event_id` (when offsets repeat, as across a broker that lost its log), rows are matched
    to those event ids instead."""
    topic = launcher.topic
    events = [r for r in store.events() if r["topic"] == topic]
    if by_event_id is not None:
        per_position = Counter(r["event_id"] for r in events)
        positions = list(by_event_id)  # type: ignore[assignment]
    else:
        per_position = Counter((r["partition"], r["offset"]) for r in events)
    ids = {r["event_id"] for r in events}
    per_attribution = Counter((a["event_id"], a["model"]) for a in store.attributions() if a["event_id"] in ids)
    scored = {r["event_id"] for r in events if r["status"] == "scored"}
    alerted = {r["event_id"] for r in events if r["best_match"]}
    alerts = read_topic(bootstrap, launcher.alerts, len(alerted), timeout_s=60)
    dead = read_topic(bootstrap, launcher.dlq, sum(1 for r in events if r["status"] == "failed"), timeout_s=60)
    processed: Counter = Counter()
    pattern = re.compile(re.escape(topic) + r"/(\d+):(\d+)-(\d+)")
    for process in launcher.processes:
        for line in process.log().splitlines():
            if " stored " in line:
                for partition, first, last in pattern.findall(line):
                    processed.update((int(partition), o) for o in range(int(first), int(last) + 1))
    figures = {
        "produced": len(positions),
        "stored": len(per_position),
        "lost": sum(1 for p in positions if per_position[p] == 0),
        "duplicated": sum(c - 1 for c in per_position.values() if c > 1) + sum(c - 1 for c in per_attribution.values() if c > 1),
        "attributions_missing": sum(1 for e in scored for _ in range(models)) - len(per_attribution),
        "dead_lettered": sum(1 for r in events if r["status"] == "failed"),
        "scored": len(scored),
        "alerts_published": len(alerts),
        "alerts_distinct": len({a.key for a in alerts}),
        "alerts_missing": len(alerted - {a.key.decode() for a in alerts}),
        "dead_letters_published": len(dead),
        "dead_letters_distinct": len({dict(d.headers)["aedr.source"] for d in dead}),
        # offsets repeat when the broker lost its log: then this is not measurable from offsets
        "processed_more_than_once": None if by_event_id is not None else sum(1 for c in processed.values() if c > 1),
    }
    if valid is not None:
        figures["valid_not_scored"] = sum(1 for r in events if (r["partition"], r["offset"]) in valid
                                          and r["status"] != "scored")
    return figures


def assert_nothing_lost_or_duplicated(figures: dict, alerts: bool = True) -> None:
    """At least once: redeliveries may publish again, but no message lacks its rows and none has
    two. (`alerts` false: the broker that held some alerts is gone.)"""
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["attributions_missing"] == 0, figures
    assert figures["stored"] == figures["produced"], figures
    assert figures.get("valid_not_scored", 0) == 0, figures
    assert figures["dead_letters_distinct"] == figures["dead_lettered"], figures
    assert not alerts or figures["alerts_missing"] == 0, figures


def record(scenario: dict) -> None:
    """Append a scenario's figures to $AEDR_RELIABILITY_REPORT (JSON lines), and print them."""
    print("RELIABILITY", json.dumps(scenario))
    path = os.environ.get("AEDR_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(scenario) + "\n")


def http_status(port: int, path: str) -> int:
    """The status code of GET http://127.0.0.1:port/path (errors included)."""
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code
