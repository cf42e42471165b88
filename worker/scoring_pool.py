"""The scoring stage: one thread per device, each with its own copy of the watchlist, and the
isolation of an image that makes a model fail.

A batch goes to the scorer with the fewest batches queued (in turn among equals), so that a
scorer that finished early takes the next batch while a slower one is still busy. On its thread it is prepared (unless a prepare pool already
did it), scored through every watched model, and judged by the same scorer that scored it, so
verdicts and thresholds always come from one watchlist. A batch that raises is split in halves
until the failing images are found; the rest of the batch is scored. Then a known-good probe image
decides whose fault it is: if the probe fails too, the model or device is broken
(`ScoringUnavailable`: nothing is dead-lettered, the loop backs off and retries the batch). If the
probe scores, each failing image is tried once more, alone (a fault that has just passed blames
nothing), and those that fail again are poison: rejected with `Reason.INTERNAL`, never blamed on
the upload as a decode error. A model that gives NaN or inf for an image is treated like one that
raises.
"""

from __future__ import annotations

import logging
import math
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
                if all(math.isfinite(x) for score in s for x in (score.loss1, score.loss2, score.score)):
                    out[i] = s
                else:  # never stored as NaN: a database would refuse it, or worse, keep it
                    failures[i] = Rejection(Reason.INTERNAL, "the models gave a non-finite score")
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
    if failures:  # a known-good image tells whether the models can score at all
        try:
            scorer.probe()
        except Exception as exc:
            raise ScoringUnavailable(f"the models fail, on a known-good probe image too: {exc}") from exc
        again = sorted(failures)  # they work now: once more each, so a fault that has passed blames nothing
        failures.clear()
        for i in again:
            attempt([i])
        if failures:
            log.error("%d image(s) made the models fail while a probe image scores: rejecting them", len(failures))
    return out, failures


class ScoringPool:
    """The scorers (one per device, or one per core on a CPU) and their threads; a batch goes to
    the least busy scorer."""

    def __init__(self, scorers: Sequence[Scorer], prepare: Callable[[Message, Scorer], Prepared],
                 executors: Sequence[Executor] | None = None):
        self.scorers = tuple(scorers)
        self._prepare = prepare
        self._executors = list(executors) if executors is not None else None
        self._next = 0
        # Each scorer's batches not finished yet, read by their futures' state: a count lowered
        # in a done-callback would lag `done()` (callbacks run after waiters wake), and a batch
        # could then queue behind a busy scorer while another is idle.
        self._submitted: list[list[Future]] = [[] for _ in self.scorers]

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
        """Future[ScoredBatch] for `items`, scored by the scorer with the fewest batches queued;
        among equals, the next in turn."""
        if self._executors is None:
            self.start()
        assert self._executors is not None
        queued = self.queued()
        k = min(range(self.size), key=lambda i: (queued[i], (i - self._next) % self.size))
        self._next = (k + 1) % self.size
        future = self._executors[k].submit(self._run, self.scorers[k], list(items))
        self._submitted[k].append(future)
        return future

    def queued(self) -> tuple[int, ...]:
        """Batches submitted to each scorer and not finished yet (the finished ones are let go)."""
        self._submitted = [[f for f in futures if not f.done()] for futures in self._submitted]
        return tuple(len(futures) for futures in self._submitted)

    def _run(self, scorer: Scorer, items: list[Work]) -> ScoredBatch:
        prepared = [w.prepared.result() if w.prepared is not None else self._prepare(w.message, scorer) for w in items]
        started = time.perf_counter()
        scores, failures = score_isolating(scorer, prepared)
        score_s = time.perf_counter() - started if any(p.image is not None for p in prepared) else 0.0
        return ScoredBatch(judge(prepared, [w.received_at for w in items], scores, failures, scorer.verdicts), score_s)

    @staticmethod
    def done(scored: ScoredBatch) -> Future:
        """A finished future holding `scored` (a held batch is not scored again)."""
        future: Future = Future()
        future.set_result(scored)
        return future

    def close(self) -> None:
        for executor in self._executors or []:
            executor.shutdown(wait=False, cancel_futures=True)
