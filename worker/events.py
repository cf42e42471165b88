"""Upload events and the messages the worker publishes: schema, decoding, validation. Pure.

Input, JSON UTF-8, schema version 1:
    {"event_id": str, "image_url": str | "image_b64": str (exactly one),
     "uploaded_at": RFC 3339 str (optional), "metadata": object (optional),
     "schema_version": 1 (optional)}

Anything else raises `InvalidEvent(reason, message)`. The reason is a `Reason`, a closed set of
stable short codes that the dead-letter topic, the `aedr_dlq_total{reason}` metric and the
`events.error` column carry; it travels as a value from where it is raised to where it is
counted, never as text to be parsed back. Validation lives here once.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why an event was dead-lettered (a closed set: dashboards and alert rules group by it)."""

    BAD_JSON = "bad_json"  # not UTF-8 JSON
    SCHEMA = "schema"  # JSON, but not a valid event
    FETCH = "fetch"  # image_url could not be fetched (or is not allowed)
    DECODE = "decode"  # the bytes are not an image we can score
    TOO_LARGE = "too_large"  # over a configured size limit
    INTERNAL = "internal"  # a bug of ours met this input: not the upload's fault, kept apart


REASONS = tuple(Reason)

SCHEMA_VERSION = 1
MAX_EVENT_ID_LENGTH = 256
_ALLOWED_KEYS = {"event_id", "image_url", "image_b64", "uploaded_at", "metadata", "schema_version"}


class InvalidEvent(Exception):
    """A message the worker will not score, and why."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = Reason(reason)


@dataclass(frozen=True)
class UploadEvent:
    event_id: str
    image_url: str | None = None
    image_b64: str | None = None
    uploaded_at: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:20]} is out of range")
    return number


def strict_json(text: str) -> Any:
    """RFC 8259 JSON only: NaN, Infinity and numbers that overflow a float are refused (they
    could not be published again as JSON); raises ValueError, like json.loads."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def decode_event(value: bytes | None, max_bytes: int) -> UploadEvent:
    """Parse and validate one message value."""
    if value is None:
        raise InvalidEvent(Reason.SCHEMA, "message has no value (tombstone)")
    # A base64 payload is 4/3 of the image, plus the JSON around it.
    if len(value) > max_bytes * 4 // 3 + 64 * 1024:
        raise InvalidEvent(Reason.TOO_LARGE, f"message is {len(value)} bytes; image limit {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(Reason.BAD_JSON, f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        raw = strict_json(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; so is a 5 000-digit int
        raise InvalidEvent(Reason.BAD_JSON, f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise InvalidEvent(Reason.SCHEMA, f"event must be a JSON object, got {type(raw).__name__}")
    unknown = set(raw) - _ALLOWED_KEYS
    if unknown:
        raise InvalidEvent(Reason.SCHEMA, f"unknown field(s): {', '.join(sorted(unknown))[:200]}")
    version = raw.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise InvalidEvent(Reason.SCHEMA, f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    event_id = raw.get("event_id")
    if not isinstance(event_id, str) or not event_id.strip():
        raise InvalidEvent(Reason.SCHEMA, "event_id must be a non-empty string")
    if len(event_id) > MAX_EVENT_ID_LENGTH or not event_id.isprintable():
        raise InvalidEvent(Reason.SCHEMA, f"event_id must be ≤ {MAX_EVENT_ID_LENGTH} printable characters")
    url, b64 = raw.get("image_url"), raw.get("image_b64")
    if (url is None) == (b64 is None):
        raise InvalidEvent(Reason.SCHEMA, "exactly one of image_url and image_b64 is required")
    if url is not None and (not isinstance(url, str) or not url):
        raise InvalidEvent(Reason.SCHEMA, "image_url must be a non-empty string")
    if b64 is not None and (not isinstance(b64, str) or not b64):
        raise InvalidEvent(Reason.SCHEMA, "image_b64 must be a non-empty string")
    uploaded_at = raw.get("uploaded_at")
    if uploaded_at is not None:
        if not isinstance(uploaded_at, str):
            raise InvalidEvent(Reason.SCHEMA, "uploaded_at must be an RFC 3339 string")
        try:
            datetime.fromisoformat(uploaded_at.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent(Reason.SCHEMA, f"uploaded_at {uploaded_at[:64]!r} is not RFC 3339") from None
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise InvalidEvent(Reason.SCHEMA, "metadata must be a JSON object")
    return UploadEvent(event_id=event_id, image_url=url, image_b64=b64, uploaded_at=uploaded_at, metadata=metadata)


def decode_b64_image(data: str, max_bytes: int) -> bytes:
    """The image bytes of an `image_b64` field (standard alphabet, padding required)."""
    if len(data) > (max_bytes + 2) // 3 * 4:
        raise InvalidEvent(Reason.TOO_LARGE, f"image_b64 decodes to more than {max_bytes} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidEvent(Reason.DECODE, f"image_b64 is not valid base64: {exc}") from None


def event_id_hint(value: bytes | None) -> str | None:
    """Best-effort event_id of a message that failed validation (for the events table)."""
    if not value:
        return None
    try:
        raw = strict_json(value.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if isinstance(raw, dict):
        event_id = raw.get("event_id")
        if isinstance(event_id, str) and event_id.strip() and len(event_id) <= MAX_EVENT_ID_LENGTH and event_id.isprintable():
            return event_id
    return None


def alert_message(event: UploadEvent, matches: list[dict[str, Any]], best: dict[str, Any] | None, scored_at: str,
                  alerted_by: list[str] | None = None, provenance: dict[str, Any] | None = None,
                  rescan: bool = False) -> bytes:
    """The alert published for an event that matched at least one watchlist model, or whose
    provenance alerts; `best` is the match `worker.decision.best_match` chose (None when no model
    matched), `alerted_by` says why ("aedr", "provenance"), `provenance` is the section that
    worker.provenance_step builds (absent when provenance is disabled); `rescan` marks an alert
    that `aedr rescan` raised for an event scored before."""
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event.event_id,
        "matches": matches,
        "best_match": best,
        "alerted_by": alerted_by if alerted_by is not None else ["aedr"],
        "scored_at": scored_at,
        "rescan": rescan,
        "metadata": event.metadata,
    }
    if provenance is not None:
        payload["provenance"] = provenance
    # UTF-8 as is (escaping every non-ASCII character can triple the size); never NaN/Infinity.
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
