"""Alembic environment: the URL comes from `aedr db upgrade` (config.attributes["url"]) or,
for the plain `alembic` command, from AEDR_DATABASE__URL; the metadata from worker.storage."""

from __future__ import annotations

import os
import time

from alembic import context
from sqlalchemy import create_engine, text

from worker.storage import MIGRATION_LOCK_KEY, Base

config = context.config
url = config.attributes.get("url") or os.environ.get("AEDR_DATABASE__URL") or config.get_main_option("sqlalchemy.url")
if not url:
    raise SystemExit("no database URL: use `aedr db upgrade` or set AEDR_DATABASE__URL")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Each migration in its own transaction. On Postgres, a session-level advisory lock is
    held throughout, so that several `aedr db upgrade` (one per pod's init container) run one
    after the other; each reads the current revision only once it holds the lock."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:
                _wait_for_lock(connection)
            try:
                context.configure(
                    connection=connection,
                    target_metadata=Base.metadata,
                    render_as_batch=connection.dialect.name == "sqlite",
                    transaction_per_migration=True,
                )
                with context.begin_transaction():
                    context.run_migrations()
            finally:
                if postgres:
                    if connection.in_transaction():
                        connection.rollback()
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    connection.commit()
    finally:
        engine.dispose()


def _wait_for_lock(connection, poll_s: float = 0.2) -> None:
    """Take the migration lock, polling with pg_try_advisory_lock outside any transaction. A
    blocking pg_advisory_lock would wait inside a statement that holds a snapshot, and
    CREATE INDEX CONCURRENTLY (0003) in the holder's session waits for every older snapshot to
    end: the two would wait on each other and Postgres would kill one as a deadlock."""
    while True:
        got = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}).scalar()
        connection.commit()
        if got:
            return
        time.sleep(poll_s)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
