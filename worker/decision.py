"""The decision, in one place: when an image is attributed to a watched model, and which model
is an event's best match.

An image is attributed to model k when its calibrated score is below k's threshold (strict,
METHOD.md). Several models can match one image. The matches that alert are those of models in
`alert` mode (a `shadow` model is scored and stored, but never alerts); the event's `best_match`
is the alerting match with the lowest score/threshold, the model whose threshold it clears by
the widest factor. The worker,
`aedr score`, `aedr calibrate` and the demo all decide through these functions, so they cannot
disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np


def belongs(score: float, threshold: float) -> bool:
    """Attributed to the model iff t' < τ (strict)."""
    return bool(score < threshold)


def attributed(scores: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """`belongs` for many scores at once (calibration and evaluation work on arrays)."""
    return np.asarray(scores, dtype=np.float64) < threshold


@dataclass(frozen=True)
class Match:
    """One model that an image was attributed to."""

    model: str
    score: float
    threshold: float

    @property
    def margin(self) -> float:
        """score/threshold: below 1 for a match; the lower, the clearer."""
        return self.score / self.threshold

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "score": self.score, "threshold": self.threshold}


def alerting(attributions: Iterable[Any]) -> list[Match]:
    """The matches that alert, from attributions (records, or rows as mappings): attributed
    (`belongs`) by a model in `alert` mode."""
    out = []
    for a in attributions:
        get = a.get if isinstance(a, Mapping) else lambda key, default=None, a=a: getattr(a, key, default)
        if get("belongs") and get("mode", "alert") == "alert":
            out.append(Match(get("model"), get("score"), get("threshold")))
    return out


def best_match(matches: Iterable[Match]) -> Match | None:
    """The match with the lowest score/threshold, or None when nothing matched."""
    return min(matches, key=lambda m: m.margin, default=None)
