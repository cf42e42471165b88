"""Where verdicts live: a narrow `Store` protocol, one SQLAlchemy implementation, one in memory.

Writes are idempotent: Kafka delivers at least once, so a batch that was stored but whose
offsets were not committed (crash, rebalance) comes again. Every insert is
`ON CONFLICT DO NOTHING` on the natural keys (event_id; event_id + model; event_id + idx for an
event's provenance signals and extraction errors), and one micro-batch is one transaction, so a
batch is either wholly stored or not at all. ORM rows never leave this
module: callers pass and get plain dataclasses.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .errors import AedrError, ServiceUnavailable

if TYPE_CHECKING:
    from .config import DatabaseSettings

def migrations_dir() -> Path:
    """migrations/ beside the package (a checkout), or AEDR_MIGRATIONS_DIR (an installed image)."""
    import os

    return Path(os.environ.get("AEDR_MIGRATIONS_DIR") or Path(__file__).resolve().parent.parent / "migrations")


# ---------------------------------------------------------------- what callers see


@dataclass(frozen=True)
class AttributionRecord:
    model: str
    loss1: float
    loss2: float
    ratio: float
    homogeneity: float
    score: float
    threshold: float
    belongs: bool


@dataclass(frozen=True)
class ProvenanceRecord:
    """One provenance signal of an event (worker.provenance.Signal as stored). `idx` is its
    position in the event's extraction order; `detail` is JSON text; `alerted` is whether the
    policy made it raise the alert."""

    idx: int
    kind: str
    strength: str
    generator: str | None
    generative: bool
    alerted: bool
    detail: str


@dataclass(frozen=True)
class ProvenanceErrorRecord:
    """One extraction error of an event (`reason`: limit, malformed, remote_reference,
    unavailable, internal)."""

    idx: int
    kind: str
    reason: str
    message: str


@dataclass(frozen=True)
class EventOutcome:
    """Everything stored about one consumed message."""

    event_id: str
    topic: str
    partition: int
    offset: int
    status: str  # "scored" | "failed"
    received_at: datetime
    scored_at: datetime | None = None
    error: str | None = None
    best_match: str | None = None
    attributions: tuple[AttributionRecord, ...] = ()
    provenance: tuple[ProvenanceRecord, ...] = ()
    provenance_errors: tuple[ProvenanceErrorRecord, ...] = ()


_CHILDREN = ("attributions", "provenance", "provenance_errors")  # EventOutcome fields stored in their own tables


@dataclass(frozen=True)
class CalibrationRecord:
    model: str
    weights_sha256: str
    alpha: float
    threshold: float
    n: int
    preprocessing_sha256: str
    calibrated_at: str


class Store(Protocol):
    def save(self, outcomes: Sequence[EventOutcome]) -> None:
        """Store a micro-batch in one transaction; re-saving an event changes nothing."""

    def record_calibrations(self, records: Sequence[CalibrationRecord]) -> None:
        """Remember which thresholds are in use (one row per model and weights hash)."""

    def ping(self) -> None:
        """Raise if the store cannot be reached."""

    def is_data_error(self, exc: Exception) -> bool:
        """Whether `exc` from `save` means the database refused the rows themselves (so storing
        them again cannot help), rather than being unreachable or broken."""


# ---------------------------------------------------------------- SQLAlchemy


class Base(DeclarativeBase):
    pass


class _EventRow(Base):
    __tablename__ = "events"
    event_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    best_match: Mapped[str | None] = mapped_column(String(128), nullable=True)


class _AttributionRow(Base):
    __tablename__ = "attributions"
    event_id: Mapped[str] = mapped_column(
        String(300), ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    loss1: Mapped[float] = mapped_column(Double)
    loss2: Mapped[float] = mapped_column(Double)
    ratio: Mapped[float] = mapped_column(Double)
    homogeneity: Mapped[float] = mapped_column(Double)
    score: Mapped[float] = mapped_column(Double)
    threshold: Mapped[float] = mapped_column(Double)
    belongs: Mapped[bool] = mapped_column(Boolean, index=True)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _ProvenanceSignalRow(Base):
    __tablename__ = "provenance_signals"
    __table_args__ = (Index("ix_provenance_signals_kind_strength", "kind", "strength"),)
    event_id: Mapped[str] = mapped_column(
        String(300), ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    strength: Mapped[str] = mapped_column(String(16))
    generator: Mapped[str | None] = mapped_column(String(128), nullable=True)
    generative: Mapped[bool] = mapped_column(Boolean)
    alerted: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str] = mapped_column(Text)


class _ProvenanceErrorRow(Base):
    __tablename__ = "provenance_errors"
    event_id: Mapped[str] = mapped_column(
        String(300), ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class _CalibrationRow(Base):
    __tablename__ = "calibrations"
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    weights_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    alpha: Mapped[float] = mapped_column(Double)
    threshold: Mapped[float] = mapped_column(Double)
    n: Mapped[int] = mapped_column(Integer)
    preprocessing_sha256: Mapped[str] = mapped_column(String(64))
    calibrated_at: Mapped[str] = mapped_column(String(40))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def make_engine(url: str, settings: "DatabaseSettings | None" = None) -> Engine:
    """An engine with the pool of `settings` (database.pool_size, max_overflow, pool_timeout_s,
    pool_recycle_s, connect_timeout_s). TLS and other libpq settings travel in the URL."""
    from .config import DatabaseSettings

    settings = settings or DatabaseSettings()
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 30})
    connect_args: dict[str, Any] = {}
    if "psycopg" in url.split("://", 1)[0] or url.startswith("postgresql://"):
        connect_args["connect_timeout"] = max(1, int(settings.connect_timeout_s))
    return create_engine(url, pool_pre_ping=True, pool_size=settings.pool_size, max_overflow=settings.max_overflow,
                         pool_timeout=settings.pool_timeout_s, pool_recycle=int(settings.pool_recycle_s) or -1,
                         connect_args=connect_args)


def _columns(record: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A flat record's fields as a row (`asdict` deep-copies every value: slow per batch)."""
    return {f.name: getattr(record, f.name) for f in fields(record) if f.name not in skip}


def _child_rows(o: EventOutcome) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """An event's attributions, provenance signals and extraction errors as rows."""
    return (
        [{**_columns(a), "event_id": o.event_id, "scored_at": o.scored_at} for a in o.attributions],
        [{**_columns(p), "event_id": o.event_id} for p in o.provenance],
        [{**_columns(e), "event_id": o.event_id} for e in o.provenance_errors],
    )


def _insert_ignoring_conflicts(conn, table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2":
        # One statement, one round trip for the whole batch. SQLAlchemy would run an ON CONFLICT
        # statement's executemany row by row (its insertmanyvalues skips upserts): a round trip
        # per row, which a remote database multiplies by its latency.
        from psycopg2.extras import execute_values

        columns = [c.name for c in table.columns if c.name in rows[0]]
        names = ", ".join('"' + c + '"' for c in columns)
        statement = f'INSERT INTO "{table.name}" ({names}) VALUES %s ON CONFLICT DO NOTHING'
        with conn.connection.driver_connection.cursor() as cursor:
            execute_values(cursor, statement, [tuple(r[c] for c in columns) for r in rows], page_size=len(rows))
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two documented back ends are supported
        raise NotImplementedError(f"database {conn.dialect.name} is not supported")
    conn.execute(insert(table).on_conflict_do_nothing(), rows)


class SqlStore:
    """The Postgres (production) / SQLite (demo) store."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def from_url(cls, url: str, settings: "DatabaseSettings | None" = None) -> "SqlStore":
        return cls(make_engine(url, settings))

    def save(self, outcomes: Sequence[EventOutcome]) -> None:
        events, attributions, signals, errors = [], [], [], []
        for o in outcomes:
            events.append(_columns(o, skip=_CHILDREN))
            a, p, e = _child_rows(o)
            attributions += a
            signals += p
            errors += e
        with self.engine.begin() as conn:
            _insert_ignoring_conflicts(conn, _EventRow.__table__, events)
            _insert_ignoring_conflicts(conn, _AttributionRow.__table__, attributions)
            _insert_ignoring_conflicts(conn, _ProvenanceSignalRow.__table__, signals)
            _insert_ignoring_conflicts(conn, _ProvenanceErrorRow.__table__, errors)

    def record_calibrations(self, records: Sequence[CalibrationRecord]) -> None:
        with self.engine.begin() as conn:
            _insert_ignoring_conflicts(conn, _CalibrationRow.__table__, [_columns(r) for r in records])

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def is_data_error(self, exc: Exception) -> bool:
        from sqlalchemy.exc import DataError, IntegrityError, StatementError

        if isinstance(exc, (DataError, IntegrityError)):
            return True
        if isinstance(exc, StatementError):  # the driver refused a value (e.g. a NUL in a string)
            return isinstance(exc.orig, ValueError)
        return isinstance(exc, ValueError)  # psycopg2 raises it directly (execute_values) for such values

    # Read side, for the demo, tests and operators' scripts.
    def events(self) -> list[dict[str, Any]]:
        return self._all(_EventRow)

    def attributions(self) -> list[dict[str, Any]]:
        return self._all(_AttributionRow)

    def calibrations(self) -> list[dict[str, Any]]:
        return self._all(_CalibrationRow)

    def provenance_signals(self) -> list[dict[str, Any]]:
        return self._all(_ProvenanceSignalRow)

    def provenance_errors(self) -> list[dict[str, Any]]:
        return self._all(_ProvenanceErrorRow)

    def _all(self, row: type[Base]) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(row.__table__)).mappings().all()]

    def count_events(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(_EventRow.__table__)).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


@dataclass
class MemoryStore:
    """The store in memory, for fast unit tests: the same idempotency and the same read API as
    `SqlStore` (both pass tests/integration/test_storage.py). `fail_next` makes the next N
    saves (and pings) raise, to test retries."""

    outcomes: dict[str, EventOutcome] = field(default_factory=dict)
    calibration_rows: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    saves: int = 0
    fail_next: int = 0
    refuse: Callable[[EventOutcome], bool] = lambda outcome: False  # rows refused as data (ValueError)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def save(self, outcomes: Sequence[EventOutcome]) -> None:
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("memory store: simulated outage")
            refused = [o.event_id for o in outcomes if self.refuse(o)]
            if refused:
                raise ValueError(f"memory store: rows refused as data: {refused[:3]}")
            self.saves += 1
            for o in outcomes:
                self.outcomes.setdefault(o.event_id, o)

    def record_calibrations(self, records: Sequence[CalibrationRecord]) -> None:
        with self._lock:
            for r in records:
                self.calibration_rows.setdefault((r.model, r.weights_sha256),
                                                 {**_columns(r), "recorded_at": datetime.now(timezone.utc)})

    def ping(self) -> None:
        if self.fail_next:
            raise ConnectionError("memory store: simulated outage")

    def is_data_error(self, exc: Exception) -> bool:
        return isinstance(exc, ValueError)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [_columns(o, skip=_CHILDREN) for o in self.outcomes.values()]

    def attributions(self) -> list[dict[str, Any]]:
        return self._children(0)

    def provenance_signals(self) -> list[dict[str, Any]]:
        return self._children(1)

    def provenance_errors(self) -> list[dict[str, Any]]:
        return self._children(2)

    def _children(self, which: int) -> list[dict[str, Any]]:
        with self._lock:
            return [row for o in self.outcomes.values() for row in _child_rows(o)[which]]

    def calibrations(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.calibration_rows.values()]

    def count_events(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def close(self) -> None:
        pass


class MigrationFailed(AedrError):
    """A migration the database refused (permissions, a schema changed by hand): exit 2."""


@contextlib.contextmanager
def reaching(url: str) -> Iterator[None]:
    """Turn a database that cannot be used at start-up into one clear line: a URL that is not a
    database URL is a configuration error; a server that cannot be reached is `ServiceUnavailable`
    (the URL is shown with its password masked, and any password the driver quotes is scrubbed)."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    from .config import ConfigError, mask_url, scrub

    try:
        yield
    except (ArgumentError, NoSuchModuleError) as exc:
        detail = scrub(str(exc).splitlines()[0][:200], url)
        raise ConfigError(f"database URL {mask_url(url)} is not usable: {detail}") from None
    except OperationalError as exc:
        first = str(exc.orig or exc).strip().splitlines()
        raise ServiceUnavailable(f"database {mask_url(url)} cannot be reached: "
                                 f"{scrub((first or ['?'])[0][:300], url)}") from None


# Held (session-level) around `aedr db upgrade` on Postgres, so that several workers' init
# containers starting at once migrate one after the other: the later ones find the schema at
# head and do nothing. The key is arbitrary but fixed: "aedr" in ASCII.
MIGRATION_LOCK_KEY = 0x61656472


def upgrade(url: str, revision: str = "head") -> None:
    """Apply Alembic migrations (migrations/) to the database at `url`. A migration the database
    refuses is `MigrationFailed`, one line naming the revision and the database's reason."""
    from alembic import command
    from alembic.config import Config
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import DBAPIError, OperationalError

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["url"] = url
    try:
        command.upgrade(config, revision)
    except OperationalError as exc:
        if exc.connection_invalidated or "could not connect" in str(exc) or "connection" in str(exc.orig or "").lower()[:80]:
            raise
        raise MigrationFailed(_migration_failure(config, url, exc)) from None
    except (DBAPIError, CommandError) as exc:
        raise MigrationFailed(_migration_failure(config, url, exc)) from None


def _migration_failure(config, url: str, exc: Exception) -> str:
    from .config import mask_url, scrub

    revision = "?"
    try:  # each migration commits on its own: the failing one is the one after the current revision
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory
        from sqlalchemy import create_engine

        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
        finally:
            engine.dispose()
        script = ScriptDirectory.from_config(config)
        following = [r.revision for r in script.walk_revisions() if r.down_revision == current]
        revision = following[0] if following else str(current)
    except Exception:
        pass
    original = getattr(exc, "orig", None) or exc
    first = (str(original).strip().splitlines() or ["?"])[0][:300]
    return (f"migration {revision} failed on {mask_url(url)}: {type(original).__name__}: {scrub(first, url)}; "
            "the database is left at the previous revision (each migration is one transaction)")


# ---------------------------------------------------------------- retention


@dataclass(frozen=True)
class PruneResult:
    cutoff: datetime
    events: int  # deleted (or, dry run, that would be)
    attributions: int
    batches: int
    seconds: float
    dry_run: bool


def prune(engine: Engine, cutoff: datetime, batch_size: int = 5000, dry_run: bool = False,
          progress: Callable[[PruneResult], None] | None = None) -> PruneResult:
    """Delete events received before `cutoff`, with their attributions, in batches of
    `batch_size` events, one short transaction each, oldest first.

    Safe while workers write: only rows older than the cut-off are touched (workers insert rows
    stamped now), each batch locks only the rows it deletes, rows another transaction holds are
    skipped (`FOR UPDATE SKIP LOCKED`) for a later batch, and `lock_timeout` bounds any wait, so
    no insert ever queues behind a long lock. `ix_events_received_at` finds each batch without
    a scan (docs/OPERATIONS.md shows the plan)."""
    import time

    started = time.monotonic()
    postgres = engine.dialect.name == "postgresql"
    ev, at = _EventRow.__table__, _AttributionRow.__table__
    old = ev.c.received_at < cutoff
    if dry_run:
        with engine.connect() as conn:
            events = conn.execute(select(func.count()).select_from(ev).where(old)).scalar_one()
            attributions = conn.execute(select(func.count()).select_from(at.join(ev, ev.c.event_id == at.c.event_id))
                                        .where(old)).scalar_one()
        return PruneResult(cutoff, int(events), int(attributions), 0, time.monotonic() - started, True)
    total_events = total_attributions = batches = 0
    if postgres:
        statement = text(
            "WITH doomed AS (SELECT event_id FROM events WHERE received_at < :cutoff ORDER BY received_at "
            "LIMIT :n FOR UPDATE SKIP LOCKED), "
            "a AS (DELETE FROM attributions WHERE event_id IN (SELECT event_id FROM doomed) RETURNING 1), "
            "e AS (DELETE FROM events WHERE event_id IN (SELECT event_id FROM doomed) RETURNING 1) "
            "SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM a)")
    while True:
        with engine.begin() as conn:
            if postgres:
                conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                conn.execute(text("SET LOCAL statement_timeout = '60s'"))
                events, attributions = conn.execute(statement, {"cutoff": cutoff, "n": batch_size}).one()
            else:  # SQLite: one writer at a time anyway; no cascade unless foreign keys are on
                ids = list(conn.execute(select(ev.c.event_id).where(old).order_by(ev.c.received_at)
                                        .limit(batch_size)).scalars())
                attributions = events = 0
                for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
                    attributions += conn.execute(at.delete().where(at.c.event_id.in_(chunk))).rowcount
                    events += conn.execute(ev.delete().where(ev.c.event_id.in_(chunk))).rowcount
        if not events:
            break
        batches += 1
        total_events += int(events)
        total_attributions += int(attributions)
        if progress:
            progress(PruneResult(cutoff, total_events, total_attributions, batches, time.monotonic() - started, False))
    return PruneResult(cutoff, total_events, total_attributions, batches, time.monotonic() - started, False)
