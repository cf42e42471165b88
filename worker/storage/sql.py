"""The Postgres (production) / SQLite (demo) store.

A micro-batch's rows are stored atomically: wholly or not at all. Inserts are `ON CONFLICT DO
NOTHING` on the natural keys, so a redelivered batch adds nothing; an event stored before is
settled again by the rules of worker.storage.records (status, best_match), in a second
transaction (a crash between the two leaves the batch uncommitted in Kafka, and its redelivery
settles it).

A database far away must not set the pace, so on Postgres a batch is one round trip: every
table's rows go in one statement (data-modifying CTEs, one implicit transaction), with no BEGIN,
COMMIT or pre-ping around it. SQLAlchemy would run an ON CONFLICT executemany row by row, and a
transaction costs two more round trips; a connection that broke is dropped by SQLAlchemy when
the statement fails, and the batch is retried (worker.completion).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

from sqlalchemy import Engine, bindparam, create_engine, func, select, text

from .records import CHILDREN, CalibrationRecord, EventOutcome, Stored, child_rows, columns, settle
from .schema import (
    AttributionRow,
    Base,
    CalibrationRow,
    EventRow,
    ProvenanceErrorRow,
    ProvenanceSignalRow,
    PublishedRow,
    ReplayRow,
)

if TYPE_CHECKING:
    from ..config import DatabaseSettings


def make_engine(url: str, settings: "DatabaseSettings | None" = None) -> Engine:
    """An engine with the pool of `settings` (database.pool_size, max_overflow, pool_timeout_s,
    pool_recycle_s, connect_timeout_s). TLS and other libpq settings travel in the URL."""
    from ..config import DatabaseSettings

    settings = settings or DatabaseSettings()
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 30})
    connect_args: dict[str, Any] = {}
    if "psycopg" in url.split("://", 1)[0] or url.startswith("postgresql://"):
        connect_args["connect_timeout"] = max(1, int(settings.connect_timeout_s))
    return create_engine(url, pool_size=settings.pool_size, max_overflow=settings.max_overflow,
                         pool_timeout=settings.pool_timeout_s, pool_recycle=int(settings.pool_recycle_s) or -1,
                         connect_args=connect_args)


def insert_ignoring_conflicts(conn, table, rows: list[dict[str, Any]], returning: str | None = None) -> set[Any]:
    """Insert `rows`, skipping those whose key exists; with `returning`, the values of that column
    in the rows really inserted (on SQLite: those whose key was absent before)."""
    if not rows:
        return set()
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2":
        from psycopg2.extras import execute_values

        names = [c.name for c in table.columns if c.name in rows[0]]
        statement = (f'INSERT INTO "{table.name}" ({", ".join(chr(34) + c + chr(34) for c in names)}) VALUES %s '
                     f"ON CONFLICT DO NOTHING" + (f' RETURNING "{returning}"' if returning else ""))
        with conn.connection.driver_connection.cursor() as cursor:
            got = execute_values(cursor, statement, [tuple(r[c] for c in names) for r in rows], page_size=len(rows),
                                 fetch=bool(returning))
        return {r[0] for r in got} if returning else set()
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two documented back ends are supported
        raise NotImplementedError(f"database {conn.dialect.name} is not supported")
    before: set[Any] = set()
    if returning:
        key = table.c[returning]
        wanted = list({r[returning] for r in rows})
        before = set(conn.execute(select(key).where(key.in_(wanted))).scalars())
    conn.execute(insert(table).on_conflict_do_nothing(), rows)
    return {r[returning] for r in rows} - before if returning else set()


def insert_in_one_statement(conn, tables: Sequence[tuple[Any, list[dict[str, Any]]]], returning_table,
                            returning: str) -> set[Any]:
    """Insert every table's rows, skipping those whose key exists, in one Postgres statement
    (each insert a data-modifying CTE, in the order given: a child's foreign key is checked at
    the end of the statement); returns the `returning` column of the rows of `returning_table`
    really inserted. The values travel as bound parameters (psycopg2 interpolates them)."""
    parts, params = [], []
    for k, (table, rows) in enumerate(tables):
        if not rows:
            continue
        names = [c.name for c in table.columns if c.name in rows[0]]
        row = "(" + ", ".join(["%s"] * len(names)) + ")"
        tail = f' RETURNING "{returning}"' if table is returning_table else ""
        parts.append(f'i{k} AS (INSERT INTO "{table.name}" ({", ".join(chr(34) + c + chr(34) for c in names)}) '
                     f'VALUES {", ".join([row] * len(rows))} ON CONFLICT DO NOTHING{tail})')
        params += [r[c] for r in rows for c in names]
    if not parts:
        return set()
    k = next((k for k, (table, rows) in enumerate(tables) if table is returning_table and rows), None)
    select_ = f'SELECT "{returning}" FROM i{k}' if k is not None else "SELECT 1 WHERE false"
    return {r[0] for r in conn.exec_driver_sql("WITH " + ", ".join(parts) + " " + select_, tuple(params))}


class SqlStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def from_url(cls, url: str, settings: "DatabaseSettings | None" = None) -> "SqlStore":
        return cls(make_engine(url, settings))

    def save(self, outcomes: Sequence[EventOutcome], published: Sequence[tuple[str, str]] = ()) -> list[Stored]:
        events, attributions, signals, errors = [], [], [], []
        for o in outcomes:
            events.append(columns(o, skip=CHILDREN))
            a, p, e = child_rows(o)
            attributions += a
            signals += p
            errors += e
        marks = [{"event_id": e, "key": k} for e, k in published]
        tables = [(PublishedRow.__table__, marks), (EventRow.__table__, events), (AttributionRow.__table__, attributions),
                  (ProvenanceSignalRow.__table__, signals), (ProvenanceErrorRow.__table__, errors)]
        if self.engine.dialect.name == "postgresql" and self.engine.dialect.driver == "psycopg2":
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                new = insert_in_one_statement(conn, tables, EventRow.__table__, "event_id")
            known = [o for o in outcomes if o.event_id not in new]
            done = {}
            if known:
                with self.engine.begin() as conn:
                    done = self._settle(conn, known)
        else:
            with self.engine.begin() as conn:
                new = set()
                for table, rows in tables:
                    got = insert_ignoring_conflicts(conn, table, rows, returning="event_id" if table is EventRow.__table__
                                                    else None)
                    new |= got
                known = [o for o in outcomes if o.event_id not in new]
                done = self._settle(conn, known) if known else {}
        seen: set[str] = set()
        result = []
        for o in outcomes:  # an event twice in one batch: the second time, it existed
            result.append(Stored(existed=o.event_id not in new or o.event_id in seen,
                                 published=done.get(o.event_id, frozenset())))
            seen.add(o.event_id)
        return result

    def _settle(self, conn, known: list[EventOutcome]) -> dict[str, frozenset[str]]:
        """Events stored before: recompute their row from all their attributions; return the
        records already published for them."""
        ids = list({o.event_id for o in known})
        ev, at, pub = EventRow.__table__, AttributionRow.__table__, PublishedRow.__table__
        before = {r["event_id"]: r for r in conn.execute(select(ev).where(ev.c.event_id.in_(ids))).mappings()}
        rows = defaultdict(list)
        for r in conn.execute(select(at).where(at.c.event_id.in_(ids))).mappings():
            rows[r["event_id"]].append(_aware(r))
        published = defaultdict(set)
        for event_id, key in conn.execute(select(pub.c.event_id, pub.c.key).where(pub.c.event_id.in_(ids))):
            published[event_id].add(key)
        updates = []
        for o in known:
            was = before.get(o.event_id)
            if was is None:
                continue
            changes = settle(_aware(was), o, rows[o.event_id])
            if any(changes[k] != _aware(was)[k] for k in changes):
                updates.append({"id": o.event_id, **changes})
                before[o.event_id] = {**was, **changes}
        if updates:
            conn.execute(ev.update().where(ev.c.event_id == bindparam("id")).values(
                status=bindparam("status"), error=bindparam("error"), scored_at=bindparam("scored_at"),
                best_match=bindparam("best_match")), updates)
        return {event_id: frozenset(keys) for event_id, keys in published.items()}

    def mark_published(self, published: Sequence[tuple[str, str]]) -> None:
        with self.engine.begin() as conn:
            insert_ignoring_conflicts(conn, PublishedRow.__table__, [{"event_id": e, "key": k} for e, k in published])

    def record_calibrations(self, records: Sequence[CalibrationRecord]) -> None:
        with self.engine.begin() as conn:
            insert_ignoring_conflicts(conn, CalibrationRow.__table__, [columns(r) for r in records])

    def record_replays(self, rows: Sequence[dict[str, str]]) -> None:
        with self.engine.begin() as conn:
            insert_ignoring_conflicts(conn, ReplayRow.__table__, list(rows))

    def replayed(self, fingerprints: Sequence[str]) -> set[str]:
        table = ReplayRow.__table__
        with self.engine.connect() as conn:
            return set(conn.execute(select(table.c.fingerprint).where(table.c.fingerprint.in_(list(fingerprints))))
                       .scalars())

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def is_data_error(self, exc: Exception) -> bool:
        from sqlalchemy.exc import DataError, IntegrityError, StatementError

        if isinstance(exc, (DataError, IntegrityError)):
            return True
        if isinstance(exc, StatementError):  # the driver refused a value (e.g. a NUL in a string)
            return isinstance(exc.orig, ValueError)
        if getattr(exc, "pgcode", None) and str(exc.pgcode)[:2] in ("22", "23"):  # data or integrity (a raw driver error)
            return True
        return isinstance(exc, ValueError)  # psycopg2 raises it directly (execute_values) for such values

    # Read side, for the demo, tests and operators' scripts.
    def events(self) -> list[dict[str, Any]]:
        return self._all(EventRow)

    def attributions(self) -> list[dict[str, Any]]:
        return self._all(AttributionRow)

    def calibrations(self) -> list[dict[str, Any]]:
        return self._all(CalibrationRow)

    def provenance_signals(self) -> list[dict[str, Any]]:
        return self._all(ProvenanceSignalRow)

    def provenance_errors(self) -> list[dict[str, Any]]:
        return self._all(ProvenanceErrorRow)

    def published(self) -> list[dict[str, Any]]:
        return self._all(PublishedRow)

    def _all(self, row: type[Base]) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(row.__table__)).mappings().all()]

    def count_events(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(EventRow.__table__)).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


def _aware(row: Any) -> dict[str, Any]:
    """A row with its timestamps in UTC (SQLite drops the zone)."""
    out = dict(row)
    for key in ("scored_at", "received_at"):
        stamp = out.get(key)
        if isinstance(stamp, datetime) and stamp.tzinfo is None:
            out[key] = stamp.replace(tzinfo=timezone.utc)
    return out
