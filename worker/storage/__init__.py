"""Where verdicts live: a narrow `Store` protocol (records.py), one SQLAlchemy implementation for
Postgres and SQLite (sql.py), one in memory (memory.py), the tables (schema.py), and the
database's administration: migrations, retention (admin.py). Callers pass and get plain
dataclasses; ORM rows never leave this package."""

from .admin import (
    MIGRATION_LOCK_KEY,
    MigrationFailed,
    PruneResult,
    migrations_dir,
    prune,
    reaching,
    upgrade,
)
from .memory import MemoryStore
from .records import (
    AttributionRecord,
    CalibrationRecord,
    EventOutcome,
    ProvenanceErrorRecord,
    ProvenanceRecord,
    Store,
    Stored,
)
from .schema import Base
from .sql import SqlStore, make_engine

__all__ = [
    "MIGRATION_LOCK_KEY", "MigrationFailed", "PruneResult", "migrations_dir", "prune", "reaching", "upgrade",
    "MemoryStore", "AttributionRecord", "CalibrationRecord", "EventOutcome", "ProvenanceErrorRecord",
    "ProvenanceRecord", "Store", "Stored", "Base", "SqlStore", "make_engine",
]
