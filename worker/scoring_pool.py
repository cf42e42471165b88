"""The scoring stage: one thread per device, each with its own copy of the watchlist, and the
isolation of an image that makes a model fail.

A batch goes to the scorers in turn. On its thread it is prepared (unless a prepare pool already
did it), scored through every watched model, and judged by the same scorer that scored it, so
verdicts and thresholds always come from one watchlist. A batch that raises is split in halves
until the failing images are found; the rest of the batch is scored. When every image fails
alone, a known-good probe image decides whose fault it is: if the probe fails too, the model or
device is broken (`ScoringUnavailable`: nothing is dead-lettered, the loop backs off and
retries); if the probe scores, the images are poison and are rejected with `Reason.INTERNAL`,
never blamed on the upload as a decode error.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Protocol, Sequence

import numpy as np

from .events import Reason
from .messages import Message
from .outcomes import Judged, judge
from .prepare import Prepared, Rejection
from .scoring import Scores
from .storage import AttributionRecord

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """What the worker needs of a watchlist (worker.watchlist.Watchlist implements it)."""

    def prepare(self, pixels: np.ndarray) -> object:
        """Crop and measure one image for every model; may raise `scoring.ImageTooSmall`."""

    def score(self, images: Sequence[object]) -> list[list[Scores]]:
        """Scores[i][k]: image i against model k."""

    def verdicts(self, scores: Sequence[Scores]) -> tuple[AttributionRecord, ...]: ...

    def probe(self) -> None:
        """Score a known-good image; raises when the models cannot score at all."""


class ScoringUnavailable(RuntimeError):
    """The models fail on every input, a known-good one included: a fault of ours."""


@dataclass(frozen=True)
class ScoredBatch:
    judged: list[Judged]
    score_s: float  # time in the models (0 when nothing was scored)


@dataclass(frozen=True)
class Work:
    """One consumed message waiting to be scored."""

    message: Message
    received: float  # clock monotonic seconds
    received_at: datetime  # wall time, stored
    prepared: Future | None = None  # Future[Prepared] from a prepare pool, else prepared on the scorer


def score_isolating(scorer: Scorer, prepared: Sequence[Prepared]) -> tuple[list[list[Scores] | None], dict[int, Rejection]]:
    """Scores per item (None for rejected ones) and the rejections of images the model failed
    on. Raises `ScoringUnavailable` when nothing scores, a probe included."""
    out: list[list[Scores] | None] = [None] * len(prepared)
    failures: dict[int, Rejection] = {}
    valid = [i for i, p in enumerate(prepared) if p.image is not None]

    def attempt(indices: list[int]) -> None:
        try:
            for i, s in zip(indices, scorer.score([prepared[i].image for i in indices])):
                out[i] = s
        except Exception as exc:
            if len(indices) == 1:
                failures[indices[0]] = Rejection(Reason.INTERNAL, f"scoring failed: {type(exc).__name__}: {exc}"[:300])
                return
            log.warning("scoring %d images failed (%s); splitting the batch", len(indices), type(exc).__name__)
            half = len(indices) // 2
            attempt(indices[:half])
            attempt(indices[half:])

    if valid:
        attempt(valid)
    if valid and len(failures) == len(valid):
        try:
            scorer.probe()
        except Exception as exc:
            raise ScoringUnavailable(f"the models fail on every image, a known-good probe too: {exc}") from exc
        log.error("%d image(s) made the models fail; the probe scores: rejecting them", len(failures))
    return out, failures


class ScoringPool:
    """The scorers (one per device) and their threads; batches go to them in turn."""

    def __init__(self, scorers: Sequence[Scorer], prepare: Callable[[Message, Scorer], Prepared],
                 executors: Sequence[Executor] | None = None):
        self.scorers = tuple(scorers)
        self._prepare = prepare
        self._executors = list(executors) if executors is not None else None
        self._next = 0

    @property
    def size(self) -> int:
        return len(self.scorers)

    def prepare(self, message: Message) -> Prepared:
        """Prepare one message for the first scorer (all scorers share one watchlist)."""
        return self._prepare(message, self.scorers[0])

    def start(self) -> None:
        if self._executors is None:
            self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"score{i}") for i in range(self.size)]

    def submit(self, items: Sequence[Work]) -> Future:
        """Future[ScoredBatch] for `items`, scored by the next scorer in turn."""
        if self._executors is None:
            self.start()
        assert self._executors is not None
        k = self._next
        self._next = (k + 1) % self.size
        return self._executors[k].submit(self._run, self.scorers[k], list(items))

    def _run(self, scorer: Scorer, items: list[Work]) -> ScoredBatch:
        prepared = [w.prepared.result() if w.prepared is not None else self._prepare(w.message, scorer) for w in items]
        started = time.perf_counter()
        scores, failures = score_isolating(scorer, prepared)
        score_s = time.perf_counter() - started if any(p.image is not None for p in prepared) else 0.0
        return ScoredBatch(judge(prepared, [w.received_at for w in items], scores, failures, scorer.verdicts), score_s)

    def close(self) -> None:
        for executor in self._executors or []:
            executor.shutdown(wait=False, cancel_futures=True)
