"""Postgres for months of traffic, on the real server: concurrent `aedr db upgrade` runs on a
fresh database, `aedr db prune` while a worker writes (no row younger than the cut-off is lost),
a failed migration in one line, and no password in any output."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

from sqlalchemy import create_engine, inspect, text

from worker.harness import REPO, postgres_database
from worker.storage import AttributionRecord, EventOutcome, SqlStore


def aedr(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from worker.storage import migrations_dir

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return ScriptDirectory.from_config(config).get_current_head()


def test_concurrent_upgrades_on_a_fresh_database_all_succeed(pg_server_url):
    with postgres_database(pg_server_url, "aedr_race", migrate=False) as url:
        runs = [subprocess.Popen([sys.executable, "-m", "worker.cli", "db", "upgrade", "--database-url", url],
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(3)]
        results = [(p.wait(timeout=180), p.stderr.read()) for p in runs]
        assert [status for status, _ in results] == [0, 0, 0], results
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]
            inspector = inspect(engine)
            assert "ix_events_received_at" in {i["name"] for i in inspector.get_indexes("events")}
            assert "ix_attributions_model_scored_at" in {i["name"] for i in inspector.get_indexes("attributions")}
        finally:
            engine.dispose()


def fill(url: str, old: int, young: int) -> None:
    """`old` events 100–400 days old and `young` events 1–29 days old, each with 2 attributions."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for prefix, count, low, span in (("old", old, 100, 300), ("young", young, 1, 28)):
            conn.execute(text(
                "INSERT INTO events (event_id, topic, partition, \"offset\", status, received_at, scored_at) "
                "SELECT :p || '-' || i, 't', i % 4, i, 'scored', "
                "now() - make_interval(days => :low + (i % :span)), now() FROM generate_series(1, :n) i"),
                {"p": prefix, "n": count, "low": low, "span": span})
            conn.execute(text(
                "INSERT INTO attributions SELECT e.event_id, m, 1, 1, 1, 1, 1, 1, false, e.scored_at "
                "FROM events e CROSS JOIN (VALUES ('kl'), ('vq')) AS models(m) WHERE e.event_id LIKE :p || '-%'"),
                {"p": prefix})
    engine.dispose()


def test_prune_while_a_worker_writes_loses_no_young_row(pg_server_url):
    with postgres_database(pg_server_url, "aedr_prune") as url:
        fill(url, old=20_000, young=5_000)
        store = SqlStore.from_url(url)
        written: list[str] = []
        stop = threading.Event()
        attribution = AttributionRecord("kl", 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, True)

        def worker():  # batches of 16, as the worker stores them, stamped now
            n = 0
            while not stop.is_set():
                now = datetime.now(timezone.utc)
                batch = [EventOutcome(f"live-{n + i}", "t", 0, n + i, "scored", now, now, attributions=(attribution,))
                         for i in range(16)]
                store.save(batch)
                written.extend(o.event_id for o in batch)
                n += 16

        thread = threading.Thread(target=worker)
        thread.start()
        try:
            time.sleep(0.5)
            result = aedr("db", "prune", "--older-than", "30d", "--database-url", url, "--batch-size", "1000")
        finally:
            stop.set()
            thread.join(30)
        assert result.returncode == 0, result.stderr
        import json

        summary = json.loads(result.stdout)
        assert (summary["events"], summary["attributions"]) == (20_000, 40_000) and summary["batches"] == 20
        with store.engine.connect() as conn:
            ids = set(conn.execute(text("SELECT event_id FROM events")).scalars())
            orphans = conn.execute(text("SELECT count(*) FROM attributions a LEFT JOIN events e USING (event_id) "
                                        "WHERE e.event_id IS NULL")).scalar_one()
            attributions = conn.execute(text("SELECT count(*) FROM attributions")).scalar_one()
        assert len(written) > 100  # the writer really ran beside the prune
        assert not any(i.startswith("old-") for i in ids)
        assert {f"young-{i}" for i in range(1, 5_001)} <= ids and set(written) <= ids
        assert orphans == 0 and attributions == 2 * 5_000 + len(written)
        store.close()


def test_a_failed_migration_is_one_line(pg_server_url):
    with postgres_database(pg_server_url, "aedr_badmig", migrate=False) as url:
        engine = create_engine(url)
        with engine.begin() as conn:  # a schema changed by hand: the table exists, Alembic does not know
            conn.execute(text("CREATE TABLE events (event_id text primary key)"))
        engine.dispose()
        result = aedr("db", "upgrade", "--database-url", url)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and lines[0].startswith("aedr: error: migration 0001 failed"), result.stderr
        assert "already exists" in lines[0] and "Traceback" not in result.stderr


def test_no_password_in_any_output(pg_server_url):
    """Trust authentication ignores the password, so these URLs work and still carry one."""
    host = pg_server_url.split("@", 1)[1]
    with postgres_database(pg_server_url, "aedr_pw", migrate=False) as url:
        name = url.rsplit("/", 1)[1]
        in_userinfo = f"postgresql+psycopg2://postgres:Sekr1tPw@{host}/{name}"
        in_query = f"postgresql+psycopg2://postgres@{host}/{name}?password=Sekr1tPw&sslmode=disable"
        for args in (("db", "upgrade", "--database-url", in_userinfo),
                     ("db", "prune", "--older-than", "1d", "--dry-run", "--database-url", in_query)):
            result = aedr(*args)
            assert result.returncode == 0, result.stderr
            assert "Sekr1tPw" not in result.stdout + result.stderr and "***" in result.stdout + result.stderr
        unreachable = aedr("db", "upgrade", "--database-url", "postgresql+psycopg2://u:Sekr1tPw@127.0.0.1:1/x?password=Sekr1tPw")
        assert unreachable.returncode == 3 and "Sekr1tPw" not in unreachable.stderr, unreachable.stderr
