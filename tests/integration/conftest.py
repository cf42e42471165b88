"""Real services for integration tests: a Tansu broker on loopback (one per session: it never
frees message memory), and a fresh Postgres database per test, migrated with Alembic. The
harness itself (serve launcher, database, topics) is worker.harness, shared with the demo and
the benchmarks; the corpus is worker.corpus."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pytest

from worker.corpus import CorpusEvent, build_corpus
from worker.harness import ServeLauncher, committed_offsets, postgres_database, produce_values, read_topic, wait_for
from worker.kafka_io import LocalBroker

__all__ = ["Corpus", "ServeLauncher", "committed_offsets", "make_corpus", "produce", "produce_values", "read_topic",
           "record", "wait_for", "http_status", "assert_committed_work_is_stored"]

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


def produce(bootstrap: str, topic: str, corpus: Corpus, part: slice = slice(None)) -> list[tuple[int, int]]:
    return produce_values(bootstrap, topic, corpus.values[part], corpus.keys[part])


def assert_committed_work_is_stored(store, bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The at-least-once invariant: below each partition's committed offset, every message has
    its events row. Returns the committed offsets."""
    committed = committed_offsets(bootstrap, group, topic)
    stored = {(r["partition"], r["offset"]) for r in store.events() if r["topic"] == topic}
    for partition, offset in committed.items():
        missing = [o for o in range(offset) if (partition, o) not in stored]
        assert not missing, f"partition {partition}: offsets {missing[:10]} committed but not stored"
    return committed


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
