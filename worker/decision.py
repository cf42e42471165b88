"""The decision, in one place: when an image is attributed to a watched model, when an event
alerts, and which model is its best match.

- An image is attributed to model k when k's score is below k's threshold (strict, METHOD.md).
  The score is the one k's calibration names (worker.methods): the paper's t' or the fused
  score; both are positive, and lower means "more like k's own images".
- The matches that alert are those of models in `alert` mode: a `shadow` model is scored and
  stored, but never alerts and is never a best match.
- An event alerts when at least one watched model in alert mode matches.
- Its `best_match` is the alerting match with the lowest score/threshold: the model whose
  threshold it clears by the widest factor (ties: the first in watchlist order). No match: no
  best match, no alert.

The worker (`aedr serve`), `aedr evaluate`, `aedr score`, `aedr calibrate` and the demo all
decide through these functions, so they cannot disagree.
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


def decide(attributions: Iterable) -> tuple[list[Match], Match | None]:
    """An event's alerting matches (in watchlist order) and its best match: what `aedr serve`
    stores and alerts on, and what `aedr evaluate` counts."""
    matches = alerting(attributions)
    return matches, best_match(matches)
