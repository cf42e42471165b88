"""Which provenance signals raise an alert on their own, and when scoring may be skipped. Pure.

Default policy (docs/PROVENANCE.md has the reasoning and the forgery/removal table):
- a generative claim (IPTC trainedAlgorithmicMedia or compositeWithTrainedAlgorithmicMedia in a
  C2PA action; or generator metadata) alerts when its strength is in `alert_strengths`, by
  default only `trusted`: a valid signature chaining to an operator anchor. Untrusted, invalid
  and unsigned claims are recorded, not alerted (anyone can write them), unless configured;
- a decoded watermark alerts when the chance of its bit accuracy on an unmarked image, corrected
  for the tests made, is ≤ `watermark_max_chance` (default 1e-6: ≥ 42 of 48 bits for SDXL).
  Anyone can embed or remove this public watermark, but an unmarked image cannot reach that
  accuracy by chance, so a match means a deliberate mark, made by the SD reference code in all
  but adversarial cases.
"""

from __future__ import annotations

from .settings import ProvenanceSettings
from .signals import C2PA, TRUSTED, WATERMARK, ProvenanceResult, Signal


def raises_alert(signal: Signal, settings: ProvenanceSettings) -> bool:
    if signal.kind == WATERMARK:
        chance = signal.detail.get("family_chance")
        return settings.watermark_alert and isinstance(chance, float) and chance <= settings.watermark_max_chance
    return signal.generative and signal.strength in settings.alert_strengths


def alerts(result: ProvenanceResult, settings: ProvenanceSettings) -> list[Signal]:
    """The signals that raise an alert on their own, in extraction order."""
    return [s for s in result.signals if raises_alert(s, settings)]


def trusted_generator(result: ProvenanceResult) -> str | None:
    """The generator named by a trusted C2PA credential that claims generative content, or None.
    Phase 2 may skip reconstruction when this names a model (the credential already answers)."""
    for signal in result.signals:
        if signal.kind == C2PA and signal.strength == TRUSTED and signal.generative and signal.generator:
            return signal.generator
    return None
