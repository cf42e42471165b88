"""Provenance signals and extraction errors (issue 17): two new tables; existing rows untouched.

`provenance_signals`: one row per signal an event's file carried (C2PA, IPTC, generator metadata,
SD/SDXL watermark), keyed by (event_id, idx) like attributions are by (event_id, model), so a
redelivered batch adds nothing (ON CONFLICT DO NOTHING).
`provenance_errors`: one row per kind of evidence that could not be read (a limit, malformed
bytes, a remote manifest never fetched). A table rather than a JSON column on `events`: the
events table stays as it is, and operators can count refusals by kind and reason in SQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provenance_signals",
        sa.Column("event_id", sa.String(300), sa.ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("idx", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("strength", sa.String(16), nullable=False),
        sa.Column("generator", sa.String(128), nullable=True),
        sa.Column("generative", sa.Boolean(), nullable=False),
        sa.Column("alerted", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_provenance_signals_kind_strength", "provenance_signals", ["kind", "strength"])
    op.create_table(
        "provenance_errors",
        sa.Column("event_id", sa.String(300), sa.ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("idx", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provenance_errors")
    op.drop_index("ix_provenance_signals_kind_strength", "provenance_signals")
    op.drop_table("provenance_signals")
