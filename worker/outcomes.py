"""Where an event is decided: a scored batch → the rows to store and the records to publish.

Pure: prepared events and their scores come in; `EventOutcome` rows, alerts and dead letters
come out, with the typed facts the metrics count (reasons, verdicts). Nothing here touches the
database, the broker or the clock; `build` is called once per batch, and its result is kept
across retries, so a batch that is stored again after a failure stores the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Sequence

from .decision import decide
from .events import Reason, alert_message
from .messages import Outbound
from .prepare import Prepared, Rejection
from .storage import AttributionRecord, EventOutcome

# Longest error text kept in the events table and in a dead letter's header.
MAX_ERROR_CHARS = 2000
MAX_ERROR_HEADER_BYTES = 1000


@dataclass(frozen=True)
class Topics:
    alerts: str
    dlq: str


@dataclass(frozen=True)
class Judged:
    """One prepared event with its verdicts (None when it was not scored) or its rejection."""

    prepared: Prepared
    received_at: datetime
    attributions: tuple[AttributionRecord, ...] | None = None
    rejection: Rejection | None = None  # set when attributions is None


@dataclass(frozen=True)
class BatchResult:
    """Everything one batch stores and publishes, and what its metrics count."""

    rows: tuple[EventOutcome, ...]
    outbound: tuple[Outbound, ...]
    alerts: int
    reasons: tuple[Reason, ...]  # one per dead letter


def stamp(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds, as alerts and dead letters carry it."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(judged: Sequence[Judged], topics: Topics, scored_at: datetime) -> BatchResult:
    rows: list[EventOutcome] = []
    outbound: list[Outbound] = []
    reasons: list[Reason] = []
    alerts = 0
    when = stamp(scored_at)
    for item in judged:
        p, m = item.prepared, item.prepared.message
        if item.attributions is None:
            rejection = item.rejection or p.rejection or Rejection(Reason.INTERNAL, "neither scored nor rejected")
            reasons.append(rejection.reason)
            rows.append(EventOutcome(
                event_id=p.event_id, topic=m.topic, partition=m.partition, offset=m.offset, status="failed",
                received_at=item.received_at, error=str(rejection)[:MAX_ERROR_CHARS],
            ))
            outbound.append(dead_letter(p, rejection, topics.dlq, when))
            continue
        matches, best = decide(item.attributions)
        rows.append(EventOutcome(
            event_id=p.event_id, topic=m.topic, partition=m.partition, offset=m.offset, status="scored",
            received_at=item.received_at, scored_at=scored_at, best_match=best.model if best else None,
            attributions=item.attributions,
        ))
        if best is not None and p.event is not None:
            alerts += 1
            value = alert_message(p.event, [x.as_dict() for x in matches], best.as_dict(), when)
            outbound.append(Outbound(topics.alerts, p.event.event_id.encode(), value))
    return BatchResult(tuple(rows), tuple(outbound), alerts, tuple(reasons))


def dead_letter(prepared: Prepared, rejection: Rejection, topic: str, when: str) -> Outbound:
    """The original value and key, unchanged, with the reason in `aedr.*` headers."""
    m = prepared.message
    headers = m.headers + (
        ("aedr.reason", rejection.reason.value.encode()),
        ("aedr.error", rejection.message.encode("utf-8", "replace")[:MAX_ERROR_HEADER_BYTES]),
        ("aedr.source", m.source.encode()),
        ("aedr.failed_at", when.encode()),
    )
    return Outbound(topic, m.key, m.value if m.value is not None else b"", headers)


def judge(prepared: Sequence[Prepared], received_at: Sequence[datetime], scores: Sequence[object | None],
          failures: dict[int, Rejection], verdicts: Callable[[object], tuple[AttributionRecord, ...]]) -> list[Judged]:
    """Pair each prepared event with its verdicts, its scoring failure, or its rejection."""
    out = []
    for i, (p, at, s) in enumerate(zip(prepared, received_at, scores)):
        if s is not None:
            out.append(Judged(p, at, attributions=verdicts(s)))
        else:
            out.append(Judged(p, at, rejection=failures.get(i) or p.rejection))
    return out
