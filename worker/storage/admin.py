"""Administration of the database: migrations (`aedr db upgrade`, safe when several run at once),
retention (`aedr db prune`), and turning a database that cannot be used at start into one line."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import Engine, func, select, text

from ..errors import AedrError, ServiceUnavailable
from .schema import AttributionRow, EventRow, ProvenanceErrorRow, ProvenanceSignalRow, PublishedRow


def migrations_dir() -> Path:
    """migrations/ beside the package (a checkout), or AEDR_MIGRATIONS_DIR (an installed image)."""
    return Path(os.environ.get("AEDR_MIGRATIONS_DIR") or Path(__file__).resolve().parents[2] / "migrations")


class MigrationFailed(AedrError):
    """A migration the database refused (permissions, a schema changed by hand): exit 2."""


@contextlib.contextmanager
def reaching(url: str) -> Iterator[None]:
    """Turn a database that cannot be used at start-up into one clear line: a URL that is not a
    database URL is a configuration error; a server that cannot be reached is `ServiceUnavailable`
    (the URL is shown with its password masked, and any password the driver quotes is scrubbed)."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

    from ..config import ConfigError, mask_url, scrub

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
    from ..config import mask_url, scrub

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
    ev, at = EventRow.__table__, AttributionRow.__table__
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
                    for child in (ProvenanceSignalRow, ProvenanceErrorRow, PublishedRow):
                        table = child.__table__
                        conn.execute(table.delete().where(table.c.event_id.in_(chunk)))
                    events += conn.execute(ev.delete().where(ev.c.event_id.in_(chunk))).rowcount
        if not events:
            break
        batches += 1
        total_events += int(events)
        total_attributions += int(attributions)
        if progress:
            progress(PruneResult(cutoff, total_events, total_attributions, batches, time.monotonic() - started, False))
    return PruneResult(cutoff, total_events, total_attributions, batches, time.monotonic() - started, False)
