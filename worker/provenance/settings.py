"""Typed settings for provenance extraction and policy, and the operator's trust anchors.

The settings are plain values, read once at start-up and passed down: the `[provenance]` section
of the worker's TOML (worker/config.py loads it onto this class; `AEDR_PROVENANCE__<KEY>`
overrides it), or built directly by `aedr score` and the tests. Trust anchors are PEM files the operator chooses: a
C2PA manifest is `trusted` only if its signing chain ends at one of them. No built-in list is used:
which certificate authorities a moderation service believes is a policy decision, not a default.
`load_trust_anchors` is the one function here that touches the file system; call it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .signals import C2PA, KINDS, STRENGTHS, TRUSTED


class ProvenanceConfigError(ValueError):
    """A provenance setting is inconsistent, or a trust anchor file is unreadable or not PEM."""


@dataclass(frozen=True)
class ProvenanceSettings:
    enabled: bool = True  # read provenance at all (false: no signals, no rows, no provenance section)
    kinds: tuple[str, ...] = KINDS  # which extractors run: c2pa, iptc, metadata, watermark
    trust_anchor_paths: tuple[str, ...] = ()  # PEM files (root or intermediate CA certificates)
    # Strengths of a generative claim (C2PA/IPTC/metadata) that raise an alert on their own.
    alert_strengths: tuple[str, ...] = (TRUSTED,)
    # A decoded watermark alerts when the chance of its bit accuracy on an unmarked image is at
    # most this, after a Bonferroni correction for every (payload, channel order) tried; for the
    # SDXL payload that is ≥ 42 of 48 bits (worker/provenance/watermark.py, docs/PROVENANCE.md).
    watermark_alert: bool = True
    watermark_max_chance: float = 1e-6
    # A weaker match is still recorded as a signal (not an alert) below this chance.
    watermark_record_chance: float = 1e-4
    watermark_max_pixels: int = 1 << 18  # the decoded region: survival is the same at 2^18..whole image, cost is not (docs/PROVENANCE.md)
    # Limits on hostile input (checked before any parser sees the bytes).
    max_bytes: int = 20 * 1024 * 1024  # whole file
    max_manifest_bytes: int = 4 * 1024 * 1024  # C2PA JUMBF store (all APP11 segments / caBX)
    max_manifest_segments: int = 512  # JPEG APP11 segments (each ≤ 64 KiB)
    max_xmp_bytes: int = 1024 * 1024
    max_text_chunks: int = 256  # PNG tEXt/zTXt/iTXt chunks
    max_text_bytes: int = 2 * 1024 * 1024  # all PNG text chunks together (compressed size)
    max_exif_bytes: int = 256 * 1024
    max_pixels: int = 40_000_000  # when extraction decodes the pixels itself (watermark)
    # Skip the autoencoders for an image whose trusted C2PA credential names its generator
    # (`policy.trusted_generator`): the event is stored as scored with no attributions, and its
    # alert comes from the credential. Off by default: AEDR's own verdict is then always there.
    skip_reconstruction_when_trusted: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.alert_strengths) - set(STRENGTHS)
        if unknown:
            raise ProvenanceConfigError(f"provenance.alert_strengths: unknown {sorted(unknown)}; use {list(STRENGTHS)}")
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ProvenanceConfigError(f"provenance.kinds: unknown {sorted(unknown)}")
        if not 0 < self.watermark_max_chance <= self.watermark_record_chance < 1:
            raise ProvenanceConfigError("provenance: need 0 < watermark_max_chance ≤ watermark_record_chance < 1")
        if self.watermark_max_pixels < 256 * 256:
            raise ProvenanceConfigError("provenance.watermark_max_pixels must be ≥ 65536 (the decoder's minimum)")
        for name in ("max_bytes", "max_manifest_bytes", "max_manifest_segments", "max_xmp_bytes", "max_text_chunks",
                     "max_text_bytes", "max_exif_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ProvenanceConfigError(f"provenance.{name} must be ≥ 1")
        if self.skip_reconstruction_when_trusted and (TRUSTED not in self.alert_strengths or C2PA not in self.kinds):
            # A skipped image gets no AEDR verdict: its credential must both be read and alert.
            raise ProvenanceConfigError(
                "provenance.skip_reconstruction_when_trusted needs 'c2pa' in provenance.kinds and 'trusted' in "
                "provenance.alert_strengths (a skipped image would otherwise be neither scored nor alerted)")


@dataclass(frozen=True)
class TrustAnchors:
    """PEM text of the operator's anchors (concatenated), and how many certificates it holds."""

    pem: str = ""
    count: int = 0
    sources: tuple[str, ...] = ()


NO_ANCHORS = TrustAnchors()

_BEGIN = "-----BEGIN CERTIFICATE-----"


def load_trust_anchors(paths: tuple[str, ...] | list[str]) -> TrustAnchors:
    """Read and check the PEM files once (each must hold at least one X.509 certificate)."""
    from cryptography import x509

    texts: list[str] = []
    count = 0
    for raw in paths:
        path = Path(raw)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProvenanceConfigError(f"provenance.trust_anchor_paths: {path}: {exc}") from None
        try:
            certs = x509.load_pem_x509_certificates(text.encode())
        except ValueError as exc:
            raise ProvenanceConfigError(f"provenance.trust_anchor_paths: {path}: not PEM certificates ({exc})") from None
        count += len(certs)
        texts.append(text.strip() + "\n")
    return TrustAnchors(pem="".join(texts), count=count, sources=tuple(str(p) for p in paths))
