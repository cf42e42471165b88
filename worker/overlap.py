"""Whether a CPU worker stores a scored batch beside the next batch's scoring, or between
batches (`batch.store_beside`).

On a CPU, torch's threads fill the cores. A store done beside them costs the scoring more than
the store's own time: the completion thread's Python takes the GIL from the scoring thread
between torch's operations, and the database and the broker take CPU from it. So a quick store
(a near database) is done between batches. A slow one (a far database, a slow broker) would set
the pace there, and is done beside the scoring, where its waiting is hidden. "auto" chooses
from the recent store and scoring times of the worker's own batches; "always" and "never" fix
the choice (docs/PERFORMANCE.md has the measurements). On a GPU the loop always overlaps.
"""

from __future__ import annotations

from dataclasses import dataclass

STORE_BESIDE_MODES = ("auto", "always", "never")


def _smoothed(old: float | None, new: float, weight: float) -> float:
    return new if old is None else old + weight * (new - old)


@dataclass
class StoreOverlap:
    """The choice, and the smoothed seconds it is made from (numbers in, a bool out)."""

    mode: str = "auto"
    # Beside once a batch's store takes more than this fraction of its scoring: below it, the
    # overlap saves less than its contention costs.
    threshold: float = 0.25
    weight: float = 0.3  # of the newest batch in the moving averages
    store_s: float | None = None
    score_s: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in STORE_BESIDE_MODES:
            raise ValueError(f"store_beside must be one of {', '.join(STORE_BESIDE_MODES)}, got {self.mode!r}")

    def stored(self, seconds: float) -> None:
        """A batch's store, publish and acknowledgement took this long (its wall time)."""
        self.store_s = _smoothed(self.store_s, max(0.0, seconds), self.weight)

    def scored(self, seconds: float) -> None:
        """A batch spent this long in the models (0: nothing was scored, and nothing is learnt)."""
        if seconds > 0:
            self.score_s = _smoothed(self.score_s, seconds, self.weight)

    def beside(self) -> bool:
        if self.mode != "auto":
            return self.mode == "always"
        if self.store_s is None or self.score_s is None:
            return False  # nothing measured yet: the first store shows how far the database is
        return self.store_s > self.threshold * self.score_s
