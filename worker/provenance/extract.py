"""One call per image: bytes in, every provenance signal and extraction error out.

Each kind of evidence is read independently, and any failure of one is recorded as an
`ExtractionError` while the others go on: extraction never raises for what a file contains. The
limits in `ProvenanceSettings` are checked on the container walk before any parser runs. Heavy
libraries (c2pa, Pillow, defusedxml, invisible-watermark with OpenCV) are imported on first use,
never when worker.provenance is imported.

Phase 2 calls `extract(data, settings, anchors, pixels=rgb)` from the pipeline's prepare step,
passing the RGB array it has already decoded (worker/images.py) so nothing is decoded twice.
"""

from __future__ import annotations

import time
from typing import Callable

from . import containers, credentials, generators, metadata, xmp
from .settings import NO_ANCHORS, ProvenanceSettings, TrustAnchors
from .signals import (
    C2PA, IPTC, METADATA, UNSIGNED, WATERMARK, ExtractionError, ProvenanceResult, Signal,
    is_generative_source_type, source_type_term,
)


MAX_SIGNALS = 32  # per file
MAX_ERRORS = 32  # per file, the last one saying how many there were
MAX_XMP_PACKETS = 64  # parsed per file: each costs a parser run (hostile table, docs/PROVENANCE.md)


def extract(
    data: bytes,
    settings: ProvenanceSettings = ProvenanceSettings(),
    anchors: TrustAnchors = NO_ANCHORS,
    pixels=None,
) -> ProvenanceResult:
    """Signals and errors of one file. `pixels`: its RGB uint8 (H, W, 3) array when the caller has
    decoded it already; else the watermark check decodes it (worker.images.decode_image)."""
    if not settings.enabled:
        return ProvenanceResult()
    if len(data) > settings.max_bytes:
        return ProvenanceResult(errors=(ExtractionError("file", "limit", f"{len(data)} bytes; limit {settings.max_bytes}"),))
    signals: list[Signal] = []
    errors: list[ExtractionError] = []
    seconds: dict[str, float] = {}

    def timed(name: str, step: Callable[[], tuple[list[Signal], list[ExtractionError]]]) -> None:
        start = time.perf_counter()
        try:
            found, failed = step()
        except Exception as exc:  # a bug or a library surprise: recorded, the rest goes on
            found, failed = [], [ExtractionError(name, "internal", f"{type(exc).__name__}: {str(exc)[:200]}")]
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        signals.extend(found)
        errors.extend(failed)

    start = time.perf_counter()
    box = containers.walk(data, settings.max_xmp_bytes)
    seconds["container"] = time.perf_counter() - start
    for problem in box.problems:  # the parsers below still get what could be read
        errors.append(ExtractionError("file", "limit" if problem.startswith("more than") else "malformed", problem))
    facts: list[xmp.XmpFacts] = []

    def read_xmp() -> tuple[list[Signal], list[ExtractionError]]:
        failed: list[ExtractionError] = []
        if box.xmp_bytes > settings.max_xmp_bytes:
            failed.append(ExtractionError(IPTC, "limit", f"XMP of {box.xmp_bytes}+ bytes; limit {settings.max_xmp_bytes}"))
        if len(box.xmp) > MAX_XMP_PACKETS:  # a file has one or two (standard + extended)
            failed.append(ExtractionError(IPTC, "limit", f"{len(box.xmp)} XMP packets; read the first {MAX_XMP_PACKETS}"))
        for packet in box.xmp[:MAX_XMP_PACKETS]:
            try:
                facts.append(xmp.parse(packet))
            except ValueError as exc:
                failed.append(ExtractionError(IPTC, "malformed", str(exc)[:200]))
        return _iptc_signals(facts) if IPTC in settings.kinds else [], failed

    kinds = settings.kinds
    if IPTC in kinds or C2PA in kinds:  # c2pa needs the XMP only for a remote reference
        timed(IPTC, read_xmp)
    if C2PA in kinds:
        hint = next((f.provenance for f in facts if f.provenance), None)
        timed(C2PA, lambda: credentials.read(data, box, settings, anchors, hint))
    if METADATA in kinds and box.format != "other":
        timed(METADATA, lambda: metadata.read(data, box, settings))
    if WATERMARK in kinds:
        if pixels is None:
            pixels = _decode(data, settings, seconds, errors)
        if pixels is not None:
            timed(WATERMARK, lambda: _watermark(pixels, settings))
    return _bounded(signals, errors, seconds)


def _bounded(signals: list[Signal], errors: list[ExtractionError], seconds: dict[str, float]) -> ProvenanceResult:
    """At most MAX_SIGNALS signals and MAX_ERRORS errors per file: a 1 MiB XMP packet can hold
    12 000 distinct source types, and 64 Ki JPEG segments as many broken packets, and each would
    otherwise become a stored row, a metric increment and a line of the alert."""
    if len(signals) > MAX_SIGNALS:
        errors.append(ExtractionError("file", "limit", f"{len(signals)} signals; kept the first {MAX_SIGNALS}"))
        signals = signals[:MAX_SIGNALS]
    if len(errors) > MAX_ERRORS:
        kept = MAX_ERRORS - 1
        errors = errors[:kept] + [ExtractionError("file", "limit", f"{len(errors)} errors; kept the first {kept}")]
    return ProvenanceResult(tuple(signals), tuple(errors), seconds)


def _iptc_signals(facts: list[xmp.XmpFacts]) -> list[Signal]:
    found: list[Signal] = []
    seen: set[str] = set()
    for fact in facts:
        for prop, value in fact.source_types:
            if value in seen:
                continue
            seen.add(value)
            detail = {"digital_source_type": value, "term": source_type_term(value),
                      "property": f"Iptc4xmpExt:{prop}", "creator_tool": fact.creator_tool}
            found.append(Signal(IPTC, UNSIGNED, generators.normalise(fact.creator_tool),
                                is_generative_source_type(value), detail))
    return found


def _decode(data: bytes, settings: ProvenanceSettings, seconds: dict[str, float], errors: list[ExtractionError]):
    from ..config import ImageSettings
    from ..images import ImageError, decode_image

    start = time.perf_counter()
    try:
        return decode_image(data, ImageSettings(max_bytes=settings.max_bytes, max_pixels=settings.max_pixels, min_side=1))
    except ImageError as exc:
        errors.append(ExtractionError(WATERMARK, "limit" if exc.reason == "too_large" else "malformed", str(exc)[:200]))
        return None
    finally:
        seconds["decode"] = time.perf_counter() - start


def _watermark(pixels, settings: ProvenanceSettings) -> tuple[list[Signal], list[ExtractionError]]:
    from . import watermark  # numpy, and OpenCV through invisible-watermark: on first use only

    match = watermark.best_match(pixels, settings.watermark_max_pixels)
    signal = watermark.signal_of(match, settings.watermark_record_chance, settings.watermark_max_chance)
    return ([signal] if signal else []), []
