"""Indexes for months of traffic: retention and the attribution rate per model over time.

- `ix_events_received_at` (events.received_at): `aedr db prune` finds the oldest events by it,
  batch after batch, without scanning the table;
- `ix_attributions_model_scored_at` (attributions.model, scored_at): "attributions per model per
  hour over the last day" reads one index range per model.
docs/OPERATIONS.md ("Database at scale") shows the query plans with and without them.

On Postgres the indexes are built CONCURRENTLY, outside a transaction: on a table that already
holds months of rows, a plain CREATE INDEX would block the workers' inserts for the whole build.

Revision ID: 0003_retention_indexes
Revises: 0001
Create Date: 2026-11-28
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_events_received_at", "events", ["received_at"]),
    ("ix_attributions_model_scored_at", "attributions", ["model", "scored_at"]),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            for name, table, columns in INDEXES:
                op.create_index(name, table, columns, postgresql_concurrently=True, if_not_exists=True)
    else:
        for name, table, columns in INDEXES:
            op.create_index(name, table, columns)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            for name, table, _ in INDEXES:
                op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
    else:
        for name, table, _ in INDEXES:
            op.drop_index(name, table_name=table)
