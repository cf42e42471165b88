"""A record that stays true over rescans, replays and recalibrations (issue 14).

- `attributions` gets `mode` (alert | shadow), `weights_sha256` and `calibration_sha256`, and its
  key becomes (event_id, model, calibration_sha256): a model judged again under a new
  calibration adds a verdict instead of being ignored. Existing rows keep their verdict under
  the calibration `legacy` (judged before calibrations were recorded per verdict) in mode
  `alert`.
- `calibrations` is keyed by (model, calibration_sha256): a model recalibrated on the same
  weights is a new row. Existing rows get `legacy-` and the start of their weights hash.
- `published` remembers which records went out per event (its dead letter, its alerts), so a
  replay or a rescan does not publish them again.
- `replays` remembers which dead letters `aedr dlq replay` re-published.

Existing rows are carried forward; nothing is deleted. On SQLite a table's key cannot be
altered in place, so the two re-keyed tables are copied into new ones.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ATTRIBUTION_COLUMNS = ("event_id", "model", "loss1", "loss2", "ratio", "homogeneity", "score", "threshold", "belongs",
                       "scored_at")
CALIBRATION_COLUMNS = ("model", "weights_sha256", "alpha", "threshold", "n", "preprocessing_sha256", "calibrated_at",
                       "recorded_at")


def _attributions(name: str) -> sa.Table:
    return op.create_table(
        name,
        sa.Column("event_id", sa.String(300), sa.ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("calibration_sha256", sa.String(64), primary_key=True),
        sa.Column("loss1", sa.Double(), nullable=False),
        sa.Column("loss2", sa.Double(), nullable=False),
        sa.Column("ratio", sa.Double(), nullable=False),
        sa.Column("homogeneity", sa.Double(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("belongs", sa.Boolean(), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False, server_default="alert"),
        sa.Column("weights_sha256", sa.String(64), nullable=False, server_default=""),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    )


def _calibrations(name: str) -> sa.Table:
    return op.create_table(
        name,
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("calibration_sha256", sa.String(64), primary_key=True),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("alpha", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("preprocessing_sha256", sa.String(64), nullable=False),
        sa.Column("calibrated_at", sa.String(40), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    # attributions: three columns and a wider key
    if postgres:
        op.add_column("attributions", sa.Column("calibration_sha256", sa.String(64), nullable=False,
                                                server_default="legacy"))
        op.add_column("attributions", sa.Column("mode", sa.String(8), nullable=False, server_default="alert"))
        op.add_column("attributions", sa.Column("weights_sha256", sa.String(64), nullable=False, server_default=""))
        op.drop_constraint("attributions_pkey", "attributions", type_="primary")
        op.create_primary_key("attributions_pkey", "attributions", ["event_id", "model", "calibration_sha256"])
    else:
        _attributions("attributions_new")
        names = ", ".join(f'"{c}"' for c in ATTRIBUTION_COLUMNS)
        op.execute(f"INSERT INTO attributions_new ({names}, calibration_sha256, mode, weights_sha256) "
                   f"SELECT {names}, 'legacy', 'alert', '' FROM attributions")
        op.drop_table("attributions")
        op.rename_table("attributions_new", "attributions")
        op.create_index("ix_attributions_belongs", "attributions", ["belongs"])
        op.create_index("ix_attributions_model_scored_at", "attributions", ["model", "scored_at"])
    # calibrations: keyed by the calibration, not only by the weights
    legacy = "'legacy-' || substr(weights_sha256, 1, 57)"  # unique per old key (model, weights)
    if postgres:
        op.add_column("calibrations", sa.Column("calibration_sha256", sa.String(64), nullable=True))
        op.execute(f"UPDATE calibrations SET calibration_sha256 = {legacy}")
        op.alter_column("calibrations", "calibration_sha256", nullable=False)
        op.drop_constraint("calibrations_pkey", "calibrations", type_="primary")
        op.create_primary_key("calibrations_pkey", "calibrations", ["model", "calibration_sha256"])
    else:
        _calibrations("calibrations_new")
        names = ", ".join(f'"{c}"' for c in CALIBRATION_COLUMNS)
        op.execute(f"INSERT INTO calibrations_new ({names}, calibration_sha256) SELECT {names}, {legacy} FROM calibrations")
        op.drop_table("calibrations")
        op.rename_table("calibrations_new", "calibrations")
    op.create_table(
        "published",
        sa.Column("event_id", sa.String(300), sa.ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("published_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "replays",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(300), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )


def downgrade() -> None:
    """Back to one verdict per (event, model): the latest is kept."""
    bind = op.get_bind()
    op.drop_table("replays")
    op.drop_table("published")
    bind.execute(sa.text(
        "DELETE FROM attributions WHERE EXISTS (SELECT 1 FROM attributions later WHERE later.event_id = "
        "attributions.event_id AND later.model = attributions.model AND (later.scored_at > attributions.scored_at OR "
        "(later.scored_at = attributions.scored_at AND later.calibration_sha256 > attributions.calibration_sha256)))"))
    bind.execute(sa.text(
        "DELETE FROM calibrations WHERE EXISTS (SELECT 1 FROM calibrations later WHERE later.model = calibrations.model "
        "AND later.weights_sha256 = calibrations.weights_sha256 AND later.calibration_sha256 > "
        "calibrations.calibration_sha256)"))
    with op.batch_alter_table("attributions", recreate="always") as batch:
        batch.drop_column("calibration_sha256")
        batch.drop_column("mode")
        batch.drop_column("weights_sha256")
    with op.batch_alter_table("calibrations", recreate="always") as batch:
        batch.drop_column("calibration_sha256")
