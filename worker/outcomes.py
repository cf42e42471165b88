"""Where an event is decided: a scored batch → the rows to store and the records to publish.

Pure: prepared events and their scores come in; per event, an `EventOutcome` row (with the
provenance rows of `Prepared.provenance`) and the alert or dead letter it publishes come out,
with the typed facts the metrics count. Nothing here
touches the database, the broker or the clock; `build` is called once per batch and its result
is kept across retries, so a batch stored again after a failure stores the same rows.

Everything that leaves is made safe for where it goes, whatever the upload contained:
- text for the database has no NUL and no lone surrogate (Postgres refuses both);
- an alert is valid JSON within `Publishing.max_alert_bytes` (a broker's default limit is
  about 1 MB): oversized metadata is cut and the cut is marked, never silently dropped;
- a dead letter keeps the original value, unless it cannot be published at all
  (`shrink`): then the value is dropped and `aedr.value_dropped` says how large it was, and
  `aedr.source` still says where the original is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Callable, Sequence

from .decision import Match, decide
from .events import Reason, UploadEvent, alert_message
from .messages import Outbound
from .prepare import Prepared, Rejection
from .storage import AttributionRecord, EventOutcome

# Longest error text kept in the events table and in a dead letter's header.
MAX_ERROR_CHARS = 2000
MAX_ERROR_HEADER_BYTES = 1000


@dataclass(frozen=True)
class Publishing:
    """Where results go, and how large a record may be."""

    alerts: str
    dlq: str
    max_alert_bytes: int = 1_000_000
    max_message_bytes: int = 32 * 1024 * 1024  # the producer's max_request_size
    forward_headers: tuple[str, ...] = ()  # input headers copied onto alerts (kafka.forward_headers)
    rescan: bool = False  # alerts are marked "rescan": true (aedr rescan)

    def forwarded(self, headers: tuple[tuple[str, bytes], ...]) -> tuple[tuple[str, bytes], ...]:
        """The input headers named in `forward_headers` (case-insensitive), in their order."""
        wanted = {h.lower() for h in self.forward_headers}
        return tuple((k, v) for k, v in headers if k.lower() in wanted) if wanted else ()


@dataclass(frozen=True)
class Judged:
    """One prepared event with its verdicts (None when it was not scored) or its rejection."""

    prepared: Prepared
    received_at: datetime
    attributions: tuple[AttributionRecord, ...] | None = None
    rejection: Rejection | None = None  # set when attributions is None


@dataclass(frozen=True)
class EventResult:
    """What one event stores and publishes. `keys` name what its record stands for, so that it
    is published once per event, whatever the redeliveries, replays and rescans
    (worker.storage.records): `dlq` for a dead letter; `alert:<model>@<calibration>` for each
    alerting match and `alert:provenance` for a provenance alert."""

    row: EventOutcome
    outbound: Outbound | None  # its alert or dead letter, if any
    reason: Reason | None = None  # set for a dead letter
    keys: tuple[str, ...] = ()

    @property
    def alerted(self) -> bool:
        return self.outbound is not None and self.reason is None


DEAD_LETTER_KEY = "dlq"
PROVENANCE_KEY = "alert:provenance"


def alert_key(attribution: AttributionRecord) -> str:
    return f"alert:{attribution.model}@{attribution.calibration_sha256[:16]}"


def clean_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Text any database stores: NUL shown as \\x00, lone surrogates replaced, at most `limit`."""
    text = text[:limit].replace("\x00", "\\x00")
    return text.encode("utf-8", "replace").decode("utf-8")


def stamp(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds, as alerts and dead letters carry it."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(judged: Sequence[Judged], publishing: Publishing, scored_at: datetime) -> list[EventResult]:
    """An event alerts when a watched model matched it or when one of its provenance signals
    alerts (the policy decided in prepare); the alert's `alerted_by` says which. Provenance rows
    are stored for every event whose image was decoded, whatever its outcome."""
    when = stamp(scored_at)
    out: list[EventResult] = []
    for item in judged:
        p, m = item.prepared, item.prepared.message
        signals, errors = p.provenance.records() if p.provenance is not None else ((), ())
        if item.attributions is None:
            rejection = item.rejection or p.rejection or Rejection(Reason.INTERNAL, "neither scored nor rejected")
            result = reject(p, rejection, item.received_at, publishing, when)
            out.append(replace(result, row=replace(result.row, provenance=signals, provenance_errors=errors)))
            continue
        matches, best = decide(item.attributions)
        row = EventOutcome(
            event_id=p.event_id, topic=m.topic, partition=m.partition, offset=m.offset, status="scored",
            received_at=item.received_at, scored_at=scored_at, best_match=best.model if best else None,
            attributions=item.attributions, provenance=signals, provenance_errors=errors,
        )
        alert = None
        provenance = p.provenance
        alerted_by = (["aedr"] if best is not None else []) + (["provenance"] if provenance and provenance.alerts else [])
        keys = tuple(alert_key(a) for a in item.attributions if a.belongs and a.mode == "alert")
        keys += (PROVENANCE_KEY,) if "provenance" in alerted_by else ()
        if alerted_by and p.event is not None:
            alert = Outbound(publishing.alerts, p.event.event_id.encode(),
                             fitted_alert(p.event, matches, best, when, publishing.max_alert_bytes, alerted_by,
                                          provenance.section() if provenance else None, publishing.rescan),
                             publishing.forwarded(m.headers))
        out.append(EventResult(row, alert, keys=keys if alert is not None else ()))
    return out


def reject(prepared: Prepared, rejection: Rejection, received_at: datetime, publishing: Publishing,
           when: str) -> EventResult:
    """A `failed` row and a dead letter for an event that will not be scored."""
    m = prepared.message
    row = EventOutcome(event_id=prepared.event_id, topic=m.topic, partition=m.partition, offset=m.offset,
                       status="failed", received_at=received_at, error=clean_text(str(rejection)))
    headers = m.headers + (
        ("aedr.reason", rejection.reason.value.encode()),
        ("aedr.error", rejection.message.encode("utf-8", "replace")[:MAX_ERROR_HEADER_BYTES]),
        ("aedr.source", m.source.encode()),
        ("aedr.failed_at", when.encode()),
    )
    letter = Outbound(publishing.dlq, m.key, m.value, headers)  # a tombstone stays a tombstone
    if _size(letter) > publishing.max_message_bytes:
        letter = shrink(letter, dead_letter=True)
    return EventResult(row, letter, rejection.reason, (DEAD_LETTER_KEY,))


def fitted_alert(event: UploadEvent, matches: list[Match], best: Match | None, when: str, max_bytes: int,
                 alerted_by: list[str] | None = None, provenance: dict[str, Any] | None = None,
                 rescan: bool = False) -> bytes:
    """The alert, with the event's metadata cut to fit `max_bytes` when it does not (the
    provenance section is bounded at extraction: at most 32 signals and 32 errors)."""
    args = ([m.as_dict() for m in matches], best.as_dict() if best else None, when, alerted_by, provenance, rescan)
    value = alert_message(event, *args)
    if len(value) <= max_bytes:
        return value
    bare = len(alert_message(replace(event, metadata={}), *args))
    metadata = fit_metadata(event.metadata, max_bytes - bare - 200)
    return alert_message(replace(event, metadata=metadata), *args)


def fit_metadata(metadata: dict[str, Any], budget: int) -> dict[str, Any]:
    """The metadata's keys in order while they fit `budget` bytes of JSON; a string that does
    not fit is cut, anything else is left out; `_aedr_truncated` lists what was cut or left out
    and the original size."""
    original = len(json.dumps(metadata, ensure_ascii=False).encode())
    kept: dict[str, Any] = {}
    cut: list[str] = []
    used = 2
    for key, value in metadata.items():
        size = len(json.dumps({key: value}, ensure_ascii=False).encode())
        if used + size <= budget:
            kept[key] = value
            used += size
            continue
        room = budget - used - len(json.dumps({key: ""}, ensure_ascii=False).encode()) - 8
        if isinstance(value, str) and room > 0:
            kept[key] = value.encode()[:room].decode("utf-8", "ignore")
            used = budget
        cut.append(key)
    kept["_aedr_truncated"] = {"keys": cut[:100], "original_bytes": original}
    return kept


def shrink(message: Outbound, dead_letter: bool) -> Outbound:
    """The same record without its value (a dead letter) or its metadata (an alert), and without
    a key longer than 1 KiB, marked: what is published when the broker refuses the record as too
    large."""
    size = len(message.value or b"")
    if dead_letter:
        headers = message.headers + (("aedr.value_dropped", str(size).encode()),)
        return Outbound(message.topic, message.key if len(message.key or b"") <= 1024 else None, None, headers)
    alert = json.loads(message.value or b"{}")
    metadata = alert.get("metadata", {})
    original = len(json.dumps(metadata, ensure_ascii=False).encode())
    alert["metadata"] = {"_aedr_truncated": {"keys": list(metadata)[:100], "original_bytes": original}}
    return Outbound(message.topic, message.key if len(message.key or b"") <= 1024 else None,
                    json.dumps(alert, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(),
                    message.headers)


def _size(message: Outbound) -> int:
    return (len(message.key or b"") + len(message.value or b"")
            + sum(len(k) + len(v) for k, v in message.headers) + 512)


def judge(prepared: Sequence[Prepared], received_at: Sequence[datetime], scores: Sequence[object | None],
          failures: dict[int, Rejection], verdicts: Callable[[object], tuple[AttributionRecord, ...]]) -> list[Judged]:
    """Pair each prepared event with its verdicts, its scoring failure, or its rejection. An
    image whose scoring was skipped for a trusted credential is scored with no verdicts."""
    out = []
    for i, (p, at, s) in enumerate(zip(prepared, received_at, scores)):
        if s is not None:
            out.append(Judged(p, at, attributions=verdicts(s)))
        elif p.rejection is None and p.provenance is not None and p.provenance.scoring_skipped:
            out.append(Judged(p, at, attributions=()))
        else:
            out.append(Judged(p, at, rejection=failures.get(i) or p.rejection))
    return out
