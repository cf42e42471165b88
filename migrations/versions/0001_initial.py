"""Initial schema: events, attributions, calibrations.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("event_id", sa.String(300), primary_key=True),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("best_match", sa.String(128), nullable=True),
    )
    op.create_index("ix_events_status", "events", ["status"])
    op.create_table(
        "attributions",
        sa.Column("event_id", sa.String(300), sa.ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("loss1", sa.Double(), nullable=False),
        sa.Column("loss2", sa.Double(), nullable=False),
        sa.Column("ratio", sa.Double(), nullable=False),
        sa.Column("homogeneity", sa.Double(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("belongs", sa.Boolean(), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_attributions_belongs", "attributions", ["belongs"])
    op.create_table(
        "calibrations",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("weights_sha256", sa.String(64), primary_key=True),
        sa.Column("alpha", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("preprocessing_sha256", sa.String(64), nullable=False),
        sa.Column("calibrated_at", sa.String(40), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("calibrations")
    op.drop_index("ix_attributions_belongs", "attributions")
    op.drop_table("attributions")
    op.drop_index("ix_events_status", "events")
    op.drop_table("events")
