"""The tables, as SQLAlchemy declarative rows. Alembic's migrations (migrations/) create them;
this metadata is what they are checked against. ORM rows never leave the storage package."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Double, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_received_at", "received_at"),)
    event_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    best_match: Mapped[str | None] = mapped_column(String(128), nullable=True)


class AttributionRow(Base):
    __tablename__ = "attributions"
    __table_args__ = (Index("ix_attributions_model_scored_at", "model", "scored_at"),)
    event_id: Mapped[str] = mapped_column(
        String(300), ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    calibration_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    loss1: Mapped[float] = mapped_column(Double)
    loss2: Mapped[float] = mapped_column(Double)
    ratio: Mapped[float] = mapped_column(Double)
    homogeneity: Mapped[float] = mapped_column(Double)
    score: Mapped[float] = mapped_column(Double)
    threshold: Mapped[float] = mapped_column(Double)
    belongs: Mapped[bool] = mapped_column(Boolean, index=True)
    mode: Mapped[str] = mapped_column(String(8))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProvenanceSignalRow(Base):
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


class ProvenanceErrorRow(Base):
    __tablename__ = "provenance_errors"
    event_id: Mapped[str] = mapped_column(
        String(300), ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class PublishedRow(Base):
    """A record that went out for an event: `dlq`, `alert:<model>@<calibration>`, or
    `alert:provenance` (worker.outcomes)."""

    __tablename__ = "published"
    event_id: Mapped[str] = mapped_column(
        String(300), ForeignKey("events.event_id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ReplayRow(Base):
    """A dead letter that `aedr dlq replay` re-published (by its key and value's fingerprint)."""

    __tablename__ = "replays"
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(300))
    reason: Mapped[str] = mapped_column(String(32))
    replayed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CalibrationRow(Base):
    __tablename__ = "calibrations"
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    calibration_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    alpha: Mapped[float] = mapped_column(Double)
    threshold: Mapped[float] = mapped_column(Double)
    n: Mapped[int] = mapped_column(Integer)
    preprocessing_sha256: Mapped[str] = mapped_column(String(64))
    calibrated_at: Mapped[str] = mapped_column(String(40))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
