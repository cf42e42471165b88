"""What callers store and read, as plain dataclasses, the `Store` protocol, and the rules that
keep an event's record true when it is processed more than once (a redelivery, a replayed dead
letter, a rescan with a new model or calibration). Pure: both stores apply these rules.

The record of an event:
- `attributions` hold one verdict per (model, calibration): a model judged again under the same
  calibration adds nothing (the verdict is deterministic); under a new calibration it adds a row.
  An event's *current* attribution for a model is its latest one.
- `events.status` is `scored` once any delivery of the event was scored (a later failure of a
  redelivery does not undo it); a dead letter that later scores moves from `failed` to `scored`,
  and its error is cleared.
- `events.best_match` is recomputed from the current attributions of the models in `alert`
  mode (worker.decision.best_match), every time the event is stored.
- `published` remembers which records went out for an event (its dead letter, and its alert per
  matching model and calibration, or for its provenance): a record already published is not
  published again, so a replay or a rescan alerts only for what is new.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Iterable, Mapping, Protocol, Sequence

from ..decision import alerting, best_match


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
    mode: str = "alert"  # alert | shadow: a shadow model never alerts nor sets best_match
    weights_sha256: str = ""
    calibration_sha256: str = ""  # the calibration the verdict was judged under


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


CHILDREN = ("attributions", "provenance", "provenance_errors")  # EventOutcome fields stored in their own tables


@dataclass(frozen=True)
class CalibrationRecord:
    model: str
    weights_sha256: str
    alpha: float
    threshold: float
    n: int
    preprocessing_sha256: str
    calibrated_at: str
    calibration_sha256: str = ""


@dataclass(frozen=True)
class Stored:
    """What storing one event found: whether it was known before, and which of its records
    (worker.outcomes keys) were already published."""

    existed: bool = False
    published: frozenset[str] = field(default_factory=frozenset)


class Store(Protocol):
    def save(self, outcomes: Sequence[EventOutcome], published: Sequence[tuple[str, str]] = ()) -> list[Stored]:
        """Store a micro-batch in one transaction, following the rules above, and first record
        `published` (event_id, key) pairs; returns, per outcome, what was known of its event."""

    def record_calibrations(self, records: Sequence[CalibrationRecord]) -> None:
        """Remember which thresholds are in use (one row per model and calibration)."""

    def mark_published(self, published: Sequence[tuple[str, str]]) -> None:
        """Remember that these (event_id, key) records went out."""

    def ping(self) -> None:
        """Raise if the store cannot be reached."""

    def is_data_error(self, exc: Exception) -> bool:
        """Whether `exc` from `save` means the database refused the rows themselves (so storing
        them again cannot help), rather than being unreachable or broken."""


def columns(record: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A flat record's fields as a row (`asdict` deep-copies every value: slow per batch)."""
    return {f.name: getattr(record, f.name) for f in fields(record) if f.name not in skip}


def child_rows(o: EventOutcome) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """An event's attributions, provenance signals and extraction errors as rows."""
    return (
        [{**columns(a), "event_id": o.event_id, "scored_at": o.scored_at} for a in o.attributions],
        [{**columns(p), "event_id": o.event_id} for p in o.provenance],
        [{**columns(e), "event_id": o.event_id} for e in o.provenance_errors],
    )


def current(attributions: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Each model's latest attribution row (by scored_at; later rows win a tie)."""
    latest: dict[str, Mapping[str, Any]] = {}
    for row in attributions:
        held = latest.get(row["model"])
        if held is None or _when(row) >= _when(held):
            latest[row["model"]] = row
    return latest


def _when(row: Mapping[str, Any]) -> float:
    stamp = row.get("scored_at")
    return stamp.timestamp() if stamp is not None else float("-inf")


def settle(before: Mapping[str, Any], outcome: EventOutcome, attributions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The events row of an event stored before (`before`), stored again with `outcome`, given
    all its attribution rows (this outcome's included): the changed columns."""
    scored = outcome.status == "scored" or before["status"] == "scored"
    matches = alerting(current(attributions).values())
    best = best_match(matches)
    kept = next((m for m in matches if m.model == before.get("best_match")), None)
    if best is not None and kept is not None and kept.margin == best.margin:
        best = kept  # a tie keeps the best match the event already had
    return {
        "status": "scored" if scored else "failed",
        "error": None if scored else outcome.error,
        "scored_at": (outcome.scored_at or before.get("scored_at")) if scored else None,
        "best_match": best.model if best else None,
    }
