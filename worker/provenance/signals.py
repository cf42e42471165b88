"""The values provenance extraction produces: signals, extraction errors, and their JSON form.

A *signal* is one piece of evidence a file carries about where it came from. Its `strength` says
how far it can be believed, and only that decides whether it may raise an alert on its own
(`worker.provenance.policy`):

- `trusted`: a signed C2PA manifest that validates and chains to one of the operator's trust
  anchors. Forging one needs the signer's private key.
- `untrusted`: signed and internally valid, but the certificate chains to no configured anchor:
  anyone can make a certificate, so this says only "someone signed this".
- `invalid`: a manifest is there but fails validation (pixels or manifest changed after signing,
  bad signature, unparseable boxes).
- `unsigned`: a claim anyone can write or strip: XMP, PNG text chunks, EXIF, and the public
  SD/SDXL watermark (its algorithm and payload are published).

Everything here is plain data (no library imports) so the stream worker, the database layer and
the JSON alerts of phase 2 can share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Kinds of evidence (a closed set: metrics and the signals table group by them).
C2PA = "c2pa"
IPTC = "iptc"
METADATA = "metadata"
WATERMARK = "watermark"
KINDS = (C2PA, IPTC, METADATA, WATERMARK)

# Strengths, strongest first.
TRUSTED = "trusted"
UNTRUSTED = "untrusted"
INVALID = "invalid"
UNSIGNED = "unsigned"
STRENGTHS = (TRUSTED, UNTRUSTED, INVALID, UNSIGNED)

# Why a kind could not be read (ExtractionError.reason; a closed set: metrics group by it), and
# the kinds an error can name: the four above, and "file" for the container itself.
ERROR_REASONS = ("limit", "malformed", "remote_reference", "unavailable", "internal")
ERROR_KINDS = ("file",) + KINDS

# IPTC digital source types (http://cv.iptc.org/newscodes/digitalsourcetype/) that say a trained
# model made all or part of the image.
GENERATIVE_SOURCE_TYPES = ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia")


@dataclass(frozen=True)
class Signal:
    """One piece of provenance evidence.

    `generator` is a normalised name (`worker.provenance.generators`) when the raw name is
    recognised, else the raw name, else None. `generative` says whether the signal itself claims
    that a generative model made the image (an IPTC/C2PA source type of trainedAlgorithmicMedia
    or its composite variant, generator metadata, or a decoded generator watermark). `detail`
    holds JSON-ready facts specific to the kind (actions, model hash, bit accuracy, …).
    """

    kind: str
    strength: str
    generator: str | None
    generative: bool
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown signal kind {self.kind!r}")
        if self.strength not in STRENGTHS:
            raise ValueError(f"unknown signal strength {self.strength!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "strength": self.strength,
            "generator": self.generator,
            "generative": self.generative,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class ExtractionError:
    """A failure to read one kind of evidence. Recorded, never raised: one bad box or packet must
    not cost the other signals, nor the scoring of the image.

    `reason` is a short stable code: `limit` (a configured bound refused the input), `malformed`
    (the bytes do not parse), `remote_reference` (a manifest that lives at a URL, never fetched),
    `unavailable` (a library is missing or failed to load), `internal` (a bug: an exception we did
    not expect)."""

    kind: str
    reason: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class ProvenanceResult:
    """Everything extraction found in one file. `seconds` is the wall time spent per kind (and
    `decode` when extraction decoded the pixels itself), for metrics and the benchmark."""

    signals: tuple[Signal, ...] = ()
    errors: tuple[ExtractionError, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)

    def of_kind(self, kind: str) -> tuple[Signal, ...]:
        return tuple(s for s in self.signals if s.kind == kind)

    def as_dict(self) -> dict[str, Any]:
        return {
            "signals": [s.as_dict() for s in self.signals],
            "errors": [e.as_dict() for e in self.errors],
        }


def source_type_term(value: str) -> str:
    """The term of an IPTC digital source type, whatever form it was written in: the full URI
    (http or https, with or without a trailing slash), a `digitalsourcetype:` QCode, or the bare
    term."""
    text = value.strip().rstrip("/")
    for sep in ("/", ":"):
        if sep in text:
            text = text.rsplit(sep, 1)[1]
    return text


def is_generative_source_type(value: str) -> bool:
    return source_type_term(value) in GENERATIVE_SOURCE_TYPES
