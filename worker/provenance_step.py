"""Provenance in the stream worker: where worker.provenance (the pure extractors and policy) meets
the pipeline. docs/PROVENANCE.md has the signals; README "Provenance" what the product does.

- Start-up (`load`, called once by `service.build`): the `[provenance]` settings, the operator's
  trust anchors read from their PEM files, and the extraction libraries imported once, so a bad
  anchor file or a missing native library (OpenCV's libGL in a slim image) stops the worker
  with one `aedr: error:` line instead of failing every event.
- Prepare (`Provenance.inspect`, from worker.prepare on whatever thread prepares): the bytes and
  the pixels already decoded → `Findings`: the signals, the policy's decision for each (made
  here, once, so the decision step needs no settings), the extraction errors, and whether the
  autoencoders are skipped. It never raises: extraction records its own failures, and anything
  else becomes one `internal` error; the event is scored as if there were no provenance.
- Decide (worker.outcomes): `Findings.section()` is the alert's `provenance` section and
  `Findings.records()` the rows stored beside the event's.

The skip rule: with `skip_reconstruction_when_trusted`, an image whose trusted C2PA credential
names its generator (`policy.trusted_generator`) is not cut nor scored. It is stored as `scored`
with no attribution rows and `best_match` null; its alert comes from the credential (which the
settings guarantee alerts: `ProvenanceSettings.__post_init__`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .config import ConfigError
from .provenance import (
    NO_ANCHORS, ExtractionError, ProvenanceConfigError, ProvenanceResult, ProvenanceSettings, TrustAnchors,
    extract, load_trust_anchors, raises_alert, trusted_generator,
)
from .provenance.signals import C2PA, IPTC, WATERMARK
from .storage import ProvenanceErrorRecord, ProvenanceRecord

if TYPE_CHECKING:
    from .metrics import Metrics
    from .outcomes import EventResult

log = logging.getLogger(__name__)

# Bounds on what is stored and published per event (the column sizes of migration 0002).
MAX_GENERATOR_CHARS = 128
MAX_ERROR_MESSAGE_CHARS = 500
MAX_DETAIL_CHARS = 64 * 1024


@dataclass(frozen=True)
class Findings:
    """One image's provenance as it travels from prepare to the stored rows and the alert."""

    result: ProvenanceResult
    alerting: tuple[bool, ...]  # per signal of result.signals: does the policy make it alert?
    scoring_skipped: bool = False  # a trusted credential named the generator; no autoencoder ran
    seconds: float = 0.0  # wall time of the extraction

    @property
    def alerts(self) -> bool:
        return any(self.alerting)

    def section(self) -> dict[str, Any]:
        """The alert's `provenance` section (and `aedr score`'s provenance line): the signals that
        raise the alert, the others as evidence, and the kinds that could not be read."""
        pairs = list(zip(self.result.signals, self.alerting))
        return _json_safe({
            "alerting": [s.as_dict() for s, a in pairs if a],
            "evidence": [s.as_dict() for s, a in pairs if not a],
            "errors": [_error_dict(e) for e in self.result.errors],
            "scoring_skipped": self.scoring_skipped,
        })

    def records(self) -> tuple[tuple[ProvenanceRecord, ...], tuple[ProvenanceErrorRecord, ...]]:
        """The rows of provenance_signals and provenance_errors, cleaned for any database: no
        NUL or lone surrogate (Postgres refuses them, and the event would then be stored as an
        `internal` failure, its signals lost), and cut to the column sizes."""
        signals = tuple(
            ProvenanceRecord(idx=i, kind=s.kind, strength=s.strength, generator=_clean(s.generator, MAX_GENERATOR_CHARS),
                             generative=s.generative, alerted=a, detail=_detail_json(s.detail))
            for i, (s, a) in enumerate(zip(self.result.signals, self.alerting))
        )
        errors = tuple(
            ProvenanceErrorRecord(idx=i, kind=_clean(e.kind, 16) or "", reason=_clean(e.reason, 32) or "",
                                  message=_clean(e.message, MAX_ERROR_MESSAGE_CHARS) or "")
            for i, e in enumerate(self.result.errors)
        )
        return signals, errors


@dataclass(frozen=True)
class Provenance:
    """The provenance step: settings and anchors, loaded once (`load`)."""

    settings: ProvenanceSettings
    anchors: TrustAnchors = NO_ANCHORS

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def inspect(self, data: bytes, pixels: np.ndarray | None) -> Findings | None:
        """Findings for one image (None when provenance is disabled). Never raises."""
        if not self.settings.enabled:
            return None
        started = time.perf_counter()
        try:
            result = extract(data, self.settings, self.anchors, pixels=pixels)
        except Exception as exc:  # extract records its own failures; this is a bug met by this input
            log.exception("provenance extraction failed")
            result = ProvenanceResult(errors=(ExtractionError("file", "internal", f"{type(exc).__name__}: {str(exc)[:200]}"),))
        return self.decide(result, time.perf_counter() - started)

    def decide(self, result: ProvenanceResult, seconds: float = 0.0) -> Findings:
        alerting = tuple(raises_alert(s, self.settings) for s in result.signals)
        skip = self.settings.skip_reconstruction_when_trusted and trusted_generator(result) is not None
        return Findings(result, alerting, skip, seconds)


def load(settings: ProvenanceSettings) -> Provenance:
    """The provenance step for a worker or `aedr score`: reads the trust anchors and imports the
    libraries of the enabled kinds. Raises `ConfigError` (one line) when it cannot."""
    if not settings.enabled:
        return Provenance(settings)
    try:
        anchors = load_trust_anchors(settings.trust_anchor_paths) if settings.trust_anchor_paths else NO_ANCHORS
    except ProvenanceConfigError as exc:
        raise ConfigError(str(exc)) from None
    check_libraries(settings)
    return Provenance(settings, anchors)


def check_libraries(settings: ProvenanceSettings) -> None:
    """Import the libraries the enabled kinds use (they load on first use otherwise)."""
    needed = {C2PA: ("c2pa", "c2pa-python"), IPTC: ("defusedxml", "defusedxml"),
              WATERMARK: ("imwatermark", "invisible-watermark (with opencv-python, which needs libGL and libglib)")}
    for kind in settings.kinds:
        if kind not in needed:
            continue
        module, package = needed[kind]
        try:
            __import__(module)
        except Exception as exc:  # ImportError, or OSError from a native library
            raise ConfigError(
                f"provenance: kind {kind!r} needs {package}, which does not load ({type(exc).__name__}: {exc}); "
                f"install it, or leave {kind!r} out of provenance.kinds") from None


def count_provenance(metrics: Metrics, results: Sequence[EventResult]) -> None:
    """Count a committed batch's provenance: signals by kind and strength, errors by kind and
    reason, alerts a provenance signal raised, and skipped reconstructions (a scored event with
    no attributions: the watchlist is never empty, so only the skip rule makes one)."""
    for r in results:
        row = r.row
        for signal in row.provenance:
            metrics.provenance_signals.labels(signal.kind, signal.strength).inc()
        for error in row.provenance_errors:
            metrics.provenance_errors.labels(error.kind, error.reason).inc()
        if r.alerted and any(signal.alerted for signal in row.provenance):
            metrics.provenance_alerts.inc()
        if r.reason is None and row.status == "scored" and not row.attributions:
            metrics.provenance_skips.inc()


def _clean(text: str | None, limit: int) -> str | None:
    """Text any database accepts: valid UTF-8, no NUL or other C0 control characters except
    tab and newline, at most `limit` characters."""
    if text is None:
        return None
    text = str(text).encode("utf-8", "replace").decode("utf-8")
    text = "".join(c if c >= " " or c in "\t\n" else "\N{REPLACEMENT CHARACTER}" for c in text)
    return text[:limit]


def _json_safe(value: Any) -> Any:
    """`value` as strict JSON takes it, whatever a file put in it: strings valid UTF-8 (a lone
    surrogate replaced; alerts are encoded as UTF-8 and would fail on one), floats finite (NaN and
    infinities become null), keys strings, anything else its str()."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return _json_safe(str(value))


def _detail_json(detail: dict[str, Any]) -> str:
    """JSON text with every non-ASCII character escaped (so NULs are safe too), or a short marker
    when it would be larger than MAX_DETAIL_CHARS."""
    text = json.dumps(_json_safe(detail), sort_keys=True, separators=(",", ":"), allow_nan=False)
    if len(text) > MAX_DETAIL_CHARS:
        return json.dumps({"truncated": True, "chars": len(text)})
    return text


def _error_dict(error: ExtractionError) -> dict[str, str]:
    return {"kind": error.kind, "reason": error.reason, "message": _clean(error.message, MAX_ERROR_MESSAGE_CHARS) or ""}

