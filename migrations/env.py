"""Alembic environment: the URL comes from `aedr db upgrade` (config.attributes["url"]) or,
for the plain `alembic` command, from AEDR_DATABASE__URL; the metadata from worker.storage."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from worker.storage import Base

config = context.config
url = config.attributes.get("url") or os.environ.get("AEDR_DATABASE__URL") or config.get_main_option("sqlalchemy.url")
if not url:
    raise SystemExit("no database URL: use `aedr db upgrade` or set AEDR_DATABASE__URL")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
