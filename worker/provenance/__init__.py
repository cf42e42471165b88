"""Provenance a file carries, as a second kind of evidence beside AEDR (GitHub issue 17).

AEDR can only name models whose autoencoder is on the watchlist. Many uploads also say where they
came from: signed C2PA content credentials, the IPTC digital source type in XMP, generator
metadata (AUTOMATIC1111, ComfyUI, …) and the invisible watermark of the SD/SDXL reference code.
This package reads them, with a strength that says how far each can be believed.

    result = extract(data, settings, anchors)        # bytes → ProvenanceResult(signals, errors)
    for signal in alerts(result, settings): ...      # policy: which alert on their own
    trusted_generator(result)                        # a trusted credential already names it

A pure core (bytes in, typed values out) with the file system touched only by
`load_trust_anchors`. Importing this package imports no third-party library; each extractor
imports its own on first use.

Modules: signals (values), settings (settings, anchors), containers (bounded container walk),
credentials (C2PA), xmp (IPTC), metadata (text chunks, EXIF), watermark (SD/SDXL watermark),
generators (name normalisation), extract (orchestration), policy (alerts).
"""

from .extract import extract
from .policy import alerts, raises_alert, trusted_generator
from .settings import NO_ANCHORS, ProvenanceConfigError, ProvenanceSettings, TrustAnchors, load_trust_anchors
from .signals import (
    C2PA, INVALID, IPTC, KINDS, METADATA, STRENGTHS, TRUSTED, UNSIGNED, UNTRUSTED, WATERMARK,
    ExtractionError, ProvenanceResult, Signal,
)

__all__ = [
    "extract", "alerts", "raises_alert", "trusted_generator",
    "ProvenanceSettings", "TrustAnchors", "NO_ANCHORS", "load_trust_anchors", "ProvenanceConfigError",
    "Signal", "ExtractionError", "ProvenanceResult",
    "KINDS", "STRENGTHS", "C2PA", "IPTC", "METADATA", "WATERMARK", "TRUSTED", "UNTRUSTED", "INVALID", "UNSIGNED",
]
