"""The database at scale: fill a throw-away Postgres database with months of rows, show the query
plans of the dashboard-style and retention queries with and without the 0003 indexes, and time
what matters for choosing (or not) declarative partitioning: a worker's inserts and a prune.

    .venv/bin/python scripts/db_scale.py --events 1000000 > /tmp/db-scale.md

Prints Markdown (docs/OPERATIONS.md, "Database at scale", is a copy of a run). Needs Postgres on
127.0.0.1:5432 (AEDR_TEST_PG_ADMIN as for the tests).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text  # noqa: E402

from worker.harness import postgres_database  # noqa: E402
from worker.storage import AttributionRecord, EventOutcome, SqlStore, make_engine, prune  # noqa: E402

ADMIN = os.environ.get("AEDR_TEST_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
MODELS = ("sd15", "sdxl", "flux", "sd35")
RATE = """SELECT date_trunc('hour', scored_at) AS hour, count(*) FILTER (WHERE belongs) AS matches, count(*) AS scored
FROM attributions WHERE model = 'sdxl' AND scored_at > now() - interval '24 hours' GROUP BY 1 ORDER BY 1"""
RETENTION = """SELECT event_id FROM events WHERE received_at < now() - interval '90 days'
ORDER BY received_at LIMIT 5000"""
INDEXES = {"ix_attributions_model_scored_at": "attributions", "ix_events_received_at": "events"}


def fill(url: str, events: int, days: int) -> float:
    """`events` events spread evenly over the last `days` days, each scored by every model."""
    started = time.monotonic()
    engine = create_engine(url)
    chunk = 200_000
    with engine.connect() as conn:
        for first in range(1, events + 1, chunk):
            last = min(events, first + chunk - 1)
            with conn.begin():
                conn.execute(text(
                    "INSERT INTO events (event_id, topic, partition, \"offset\", status, received_at, scored_at, "
                    "best_match) SELECT 'e-' || i, 'uploads', i % 8, i, 'scored', ts, ts + interval '1 second', "
                    "CASE WHEN i % 50 = 0 THEN 'sdxl' END FROM (SELECT i, now() - make_interval(secs => "
                    ":span * (:n - i)::float / :n) AS ts FROM generate_series(:a, :b) i) s"),
                    {"a": first, "b": last, "n": events, "span": days * 86400})
                conn.execute(text(
                    "INSERT INTO attributions SELECT e.event_id, m, 0.001, 0.0005, 2.0, 0.8, 1.6, 1.2, "
                    "coalesce(e.best_match = m, false), e.scored_at FROM events e CROSS JOIN unnest(CAST(:models AS text[])) AS m "
                    "WHERE e.event_id IN (SELECT 'e-' || i FROM generate_series(:a, :b) i)"),
                    {"a": first, "b": last, "models": list(MODELS)})
        conn.execute(text("COMMIT"))
        conn.execute(text("VACUUM ANALYZE events"))
        conn.execute(text("VACUUM ANALYZE attributions"))
    engine.dispose()
    return time.monotonic() - started


def explain(url: str, query: str, without: str | None = None) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        with conn.begin() as transaction:
            if without:
                conn.execute(text(f"DROP INDEX {without}"))  # rolled back below
            plan = conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {query}")).scalars().all()
            transaction.rollback()
    engine.dispose()
    return "\n".join(plan)


def insert_rate(url: str, batches: int) -> float:
    """Events per second stored by SqlStore.save in batches of 16, as the worker stores them."""
    store = SqlStore.from_url(url)
    attributions = tuple(AttributionRecord(m, 0.001, 0.0005, 2.0, 0.8, 1.6, 1.2, False) for m in MODELS)
    started = time.monotonic()
    for b in range(batches):
        now = datetime.now(timezone.utc)
        store.save([EventOutcome(f"live-{b}-{i}", "uploads", 0, b * 16 + i, "scored", now, now,
                                 attributions=attributions) for i in range(16)])
    elapsed = time.monotonic() - started
    store.close()
    return batches * 16 / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--keep-days", type=int, default=90)
    parser.add_argument("--batches", type=int, default=300, help="insert-rate sample: batches of 16 events")
    args = parser.parse_args()
    server = ADMIN.rsplit("/", 1)[0]
    with postgres_database(server, "aedr_scale") as url:
        filled = fill(url, args.events, args.days)
        engine = create_engine(url)
        with engine.connect() as conn:
            sizes = {t: conn.execute(text(f"SELECT pg_size_pretty(pg_total_relation_size('{t}'))")).scalar_one()
                     for t in ("events", "attributions")}
        engine.dispose()
        print(f"{args.events:,} events over {args.days} days, {len(MODELS)} attributions each "
              f"({args.events * len(MODELS):,} rows); filled in {filled:.0f} s; "
              f"events {sizes['events']}, attributions {sizes['attributions']} (with indexes).\n")
        for title, query, index in (("Attribution rate per model per hour, last 24 h", RATE,
                                     "ix_attributions_model_scored_at"),
                                    ("One retention batch (what `aedr db prune` selects)", RETENTION,
                                     "ix_events_received_at")):
            print(f"**{title}**\n\n```sql\n{query}\n```\n")
            print(f"With `{index}`:\n\n```\n{explain(url, query)}\n```\n")
            print(f"Without it:\n\n```\n{explain(url, query, without=index)}\n```\n")
        rate = insert_rate(url, args.batches)
        engine = create_engine(url)
        with engine.begin() as conn:
            for index in INDEXES:
                conn.execute(text(f"DROP INDEX {index}"))
        engine.dispose()
        bare_rate = insert_rate(url, args.batches)
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("CREATE INDEX ix_events_received_at ON events (received_at)"))
            conn.execute(text("CREATE INDEX ix_attributions_model_scored_at ON attributions (model, scored_at)"))
        engine.dispose()
        cutoff = datetime.now(timezone.utc) - timedelta(days=args.keep_days)
        engine = make_engine(url)
        result = prune(engine, cutoff, 5000)
        engine.dispose()
        print(f"- worker inserts (SqlStore.save, batches of 16 events × {len(MODELS)} attributions): "
              f"{rate:,.0f} events/s with every index in place, {bare_rate:,.0f} events/s without the two 0003 "
              "indexes;")
        print(f"- `aedr db prune --older-than {args.keep_days}d`: {result.events:,} events and "
              f"{result.attributions:,} attributions in {result.batches} batches of 5000, {result.seconds:.1f} s "
              f"({result.events / max(result.seconds, 1e-9):,.0f} events/s).")


if __name__ == "__main__":
    main()
