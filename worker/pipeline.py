"""The loop: poll → buffer → micro-batch → score → complete, with flow control. It decides
nothing about an event itself; each step lives in its own module:

- decoding an event: `worker.prepare` (one place an input is judged unusable);
- scoring, and isolating an image that makes a model fail: `worker.scoring_pool`;
- deciding (verdicts, best match, alerts, dead letters): `worker.outcomes`, `worker.decision`;
- storing, publishing and committing the offset: `worker.completion`.

What the loop owns:
- batching: a batch starts when `batch.max_size` events wait or the oldest has waited
  `batch.max_wait_ms`; batches are completed strictly in order, so a committed offset never
  passes an event that is not stored;
- flow control: partitions are paused while `batch.max_buffered` events wait, so memory stays
  bounded; heartbeats run on the client's own thread;
- overlap: on a GPU (`batch.inflight = 2`) a second batch is queued per scorer and the loop
  keeps polling and completing beside the device. On a CPU (`inflight = 1`) the loop waits
  while every scorer is busy. A scorer is free again once its batch is scored, even while an
  older batch is still being scored elsewhere: completion waits for the head, the scorers do
  not (at most two batches per scorer are held, scored or not). A single CPU scorer is the
  exception: its torch threads fill the cores, and anything running beside them slows them more
  than it saves (docs/PERFORMANCE.md), so a batch is stored beside the next one's scoring only
  when storing is slow (`batch.store_beside`, worker.overlap);
- a scorer that cannot score at all (`ScoringUnavailable`: a lost device, broken weights) is
  our fault, not the events': the batch is retried with backoff, nothing is dead-lettered or
  committed, and readiness fails meanwhile. So is a burst of dead letters when the optional
  guard (`guard.dead_letter_fraction`) is on, and so are records the client cannot decode (that
  partition is paused, the others go on). Held longer than `guard.fault_exit_s`, the worker
  stops with `fault` set, and `aedr serve` exits 1 for the orchestrator to restart it;
- stopping: what was received is finished and committed within `drain_s`, a hung scorer
  included; the rest is left uncommitted for the next owner.

Rebalances: nothing is dropped, and finished work is committed before its partitions move.
The loop completes scored batches before it polls (a rebalance happens inside a poll), and the
rebalance listener (worker.kafka_io) commits whatever finished work a refused commit left
behind. Every fetched event is processed in order and stored idempotently, and offsets are
committed only for partitions assigned at commit time.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from concurrent.futures import Executor, Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, replace
from typing import Callable

from .clock import Clock
from .completion import Completing, Completion, offsets_of
from .config import BatchSettings, GuardSettings, RetrySettings
from .health import DeadLetterWindow, Health
from .lag import LagMonitor
from .reload import Reloader
from .messages import Consumer, Partition, UndecodableRecords
from .metrics import Metrics
from .overlap import StoreOverlap
from .outcomes import Publishing, build
from .scoring_pool import ScoredBatch, ScoringPool, ScoringUnavailable, Work

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    """A batch handed to a scorer; completed when it comes back, in order."""

    items: list[Work]
    scored: Future | None  # Future[ScoredBatch]; None while waiting to be scored again
    completing: Completing | None = None
    finishing: Future | None = None  # Future[bool]: its store and publish, on the completion thread
    attempts: int = 0  # times the models were unavailable for it
    retry_at: float = 0.0


def first_of(futures: list[Future]) -> Future | None:
    """A future that is done when the first of `futures` is (None for none). It adds a callback
    to each of them, which stays until that one is done: make one per set of futures, not one
    per wait."""
    if not futures:
        return None
    if len(futures) == 1:
        return futures[0]
    first: Future = Future()

    def settle(_: Future) -> None:
        try:
            first.set_result(None)
        except Exception:  # concurrent.futures.InvalidStateError: another one was first
            pass
    for f in futures:
        f.add_done_callback(settle)
    return first


class Worker:
    """The consume loop: poll → window → prepare → score → complete, with the in-flight queue,
    backoff, fault holds, reload and drain.

    Longer than this project's other classes on purpose: every method here reads or changes the
    one piece of state whose order is the delivery guarantee (the in-flight queue, completed and
    committed strictly from its head) and the partitions' pause state that goes with it. The
    steps themselves live in their own modules (worker.outcomes, worker.scoring_pool,
    worker.completion, worker.health, worker.reload, worker.lag); what remains is their
    sequencing, kept in one place so that one reading shows every path an offset can take."""

    def __init__(self, consumer: Consumer, scoring: ScoringPool, completion: Completion, publishing: Publishing,
                 batch: BatchSettings, retry: RetrySettings, clock: Clock, metrics: Metrics, health: Health,
                 stop: threading.Event, prepare_executor: Executor | None = None, drain_s: float = 30.0,
                 wait: Callable[[Future, float], bool] | None = None, guard: GuardSettings = GuardSettings(),
                 lag: LagMonitor | None = None, reloader: Reloader | None = None,
                 complete_executor: Executor | None = None):
        self.consumer = consumer
        if batch.inflight < 1 or batch.prepare_threads < 0:
            raise ValueError("pass BatchSettings.resolved(): inflight and prepare_threads must be concrete")
        self.scoring = scoring
        self.completion = completion
        self.publishing = publishing
        self.batch = batch
        self.retry = retry
        self.clock = clock
        self.metrics = metrics
        self.health = health
        self.stop = stop
        self.drain_s = drain_s
        self.guard = guard
        self.lag = lag
        self.reloader = reloader
        self._reloading = False
        self.fault: str | None = None  # why the worker stopped on a fault of its own
        self._faulted_since: dict[str, float] = {}  # cause -> since when (clock)
        self._undecodable_at: dict[Partition | None, float] = {}  # since when its records could not be decoded
        self._input_fault: str | None = None
        self._dead_letters = DeadLetterWindow(guard.dead_letter_window)
        self._prepare_executor = prepare_executor
        # Stores and publishes one batch at a time beside the loop (None: on the loop's thread).
        self._complete_executor = complete_executor
        # How the loop waits for a scoring thread (tests pass worker.testing.ManualExecutor.wait).
        self._wait = wait or (lambda future, timeout: bool(wait_futures([future], timeout=timeout).done))
        self._buffer: deque[Work] = deque()
        self._inflight: deque[InFlight] = deque()
        self._paused = False
        # inflight = 1 (a CPU): while a batch is scored the loop waits on it instead of polling;
        # 2 (a GPU): the CPU polls, prepares and completes beside the device.
        self._serial = batch.inflight == 1
        self._overlap = StoreOverlap(batch.store_beside)  # on a CPU: store beside the scoring, or between?
        self._max_inflight = batch.inflight * scoring.size
        self._first: tuple[tuple[Future, ...], Future | None] | None = None  # what `_pending` waits on
        self._one_cpu_scorer = self._serial and scoring.size == 1
        metrics.batch_max_size.set(batch.max_size)

    @property
    def committed_events(self) -> int:
        return self.completion.committed_events

    @property
    def idle(self) -> bool:
        """Nothing received that is not finished."""
        return not self._buffer and not self._inflight

    # ------------------------------------------------------------ lifecycle

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Consume until stopped (or `until()` is true); then finish what was received."""
        try:
            while not self.stop.is_set() and not (until and until()):
                self.step()
        finally:
            self.drain()

    def step(self) -> None:
        """One turn: finish scored batches (store, publish, commit) before polling, so that a
        rebalance during the poll finds nothing finished and uncommitted; then poll, control the
        flow, start new batches, and report lag and liveness."""
        if self._serial and not self._room() and (pending := self._pending()) is not None:
            self._wait(pending, 1.0)  # heartbeats run on the client's own thread
        self._complete_done()
        self.completion.commit_pending()
        try:
            messages = self.consumer.poll(timeout_ms=self._poll_timeout_ms(), max_records=self.batch.max_buffered)
        except UndecodableRecords as exc:
            messages = []
            self._undecodable(exc)
        self._watch_undecodable()
        now, at = self.clock.monotonic(), self.clock.now()
        for m in messages:
            prepared = self._prepare_executor.submit(self.scoring.prepare, m) if self._prepare_executor else None
            self._buffer.append(Work(m, now, at, prepared))
        self._flow_control()
        self._complete_done()
        self._maybe_reload()
        self._start_ready()
        if self.lag is not None:
            self.lag.update()
            self._watch_assignment(self.lag.unassigned_for)
        backlog = bool(self.lag is not None and self.lag.group_lag)
        self.health.progress(waiting=bool(self._buffer or self._inflight or backlog))

    def _watch_assignment(self, seconds: float) -> None:
        """No partition while the topic has a backlog, for `guard.unassigned_exit_s`: a stuck
        group. /healthz fails, and the worker leaves for a restart to rejoin afresh."""
        if self.guard.unassigned_exit_s and seconds >= self.guard.unassigned_exit_s and self.fault is None:
            self.fault = f"no partition assigned for {seconds:.0f} s while the topic has a backlog"
            log.error("%s: leaving the group, for a restart to rejoin", self.fault)
            self.health.stuck_group(True)
            self.stop.set()

    def drain(self) -> None:
        """Score, store and commit what was already received, within `drain_s`; what is left
        is not committed and goes to the next owner."""
        deadline = self.clock.monotonic() + self.drain_s
        while self._buffer or self._inflight:
            now = self.clock.monotonic()
            if now >= deadline:
                break
            while self._buffer and self._room():
                self._start_batch()
            head = self._inflight[0]
            pending = head.finishing or head.scored
            if pending is None or not self._wait(pending, deadline - now):
                break  # models unavailable, or a scorer or the store hung: give up within the bound
            if self._complete(head):
                self._inflight.popleft()
            elif head.finishing is None:  # a failed try: again after its backoff
                self.clock.sleep(max(0.0, min(self._retry_at(head), deadline) - self.clock.monotonic()))
        left = len(self._buffer) + sum(len(b.items) for b in self._inflight)
        if left:
            log.error("stopped with %d event(s) unfinished; they will be redelivered", left)
        self._inflight.clear()
        self._buffer.clear()

    # ------------------------------------------------------------ batching

    def _batch_ready(self) -> bool:
        if not self._buffer:
            return False
        if len(self._buffer) >= self.batch.max_size or self.stop.is_set():
            return True
        return (self.clock.monotonic() - self._buffer[0].received) * 1000.0 >= self.batch.max_wait_ms

    def _poll_timeout_ms(self) -> int:
        if self._inflight:
            if not self._reloading and self._room() and self._batch_ready():
                return 0  # a scorer is free and a batch waits for it: start it after a quick poll
            head = self._inflight[0]
            if head.finishing is not None and not head.finishing.done():
                return 10  # being stored: the loop polls, and starts the next batch when it is due
            backoff = self._retry_at(head) - self.clock.monotonic()
            if backoff > 0:  # a failed try waits for its retry: no need to spin meanwhile
                return math.ceil(min(backoff, 0.1) * 1000)
            if head.scored is None or head.scored.done():
                return 0 if self._serial else 5
            # Every scorer already has its next batch queued: nothing is gained by waking often,
            # and each wake-up takes CPU (and the GIL) from the scoring thread (PERFORMANCE.md).
            return 100 if self._scoring() >= self._max_inflight else 20
        if self._buffer:
            waited = (self.clock.monotonic() - self._buffer[0].received) * 1000.0
            return math.ceil(max(0.0, min(self.batch.max_wait_ms - waited, 100)))  # ceil: never spin at 0
        return 100

    def _flow_control(self) -> None:
        """Pause every assigned partition while the buffer is full (again each turn: a rebalance
        may add unpaused partitions); resume them all once it has room, except a partition whose
        records cannot be decoded."""
        full = len(self._buffer) >= self.batch.max_buffered
        assigned = self.consumer.assignment()
        stuck = assigned & {tp for tp in self._undecodable_at if tp is not None}
        if stuck:
            self.consumer.pause(stuck)
        if full and assigned:
            self.consumer.pause(assigned)
            self._paused = True
        elif not full and self._paused:
            self.consumer.resume(assigned - stuck)
            self._paused = False

    def _undecodable(self, exc: UndecodableRecords) -> None:
        """Records the client cannot decode (a codec it lacks, a corrupt batch): that partition
        is paused, the others go on; nothing is skipped. Held longer than guard.fault_exit_s, the
        worker stops for a restart, and says why in one line (docs/OPERATIONS.md, "Undecodable
        records"). When the client does not say which partition, nothing is paused, but the
        fault is held all the same."""
        now = self.clock.monotonic()
        if exc.partition not in self._undecodable_at:
            log.error("%s", exc)
        self._undecodable_at.setdefault(exc.partition, now)
        self._faulted_since.setdefault("input", now)
        self._input_fault = str(exc)
        if exc.partition is not None:
            self.consumer.pause([exc.partition])
        self.metrics.faulted.labels("input").set(1)

    def _watch_undecodable(self) -> None:
        """A stuck partition that moved to another member is no longer ours to hold."""
        if not self._undecodable_at:
            return
        assigned = self.consumer.assignment()
        for tp in [tp for tp in self._undecodable_at if tp is not None and tp not in assigned]:
            del self._undecodable_at[tp]
        if not self._undecodable_at:
            self._faulted_since.pop("input", None)
            self.metrics.faulted.labels("input").set(0)
            return
        since = self._faulted_since["input"]
        now = self.clock.monotonic()
        if self.guard.fault_exit_s and now - since >= self.guard.fault_exit_s and self.fault is None:
            self.fault = self._input_fault
            log.error("undecodable records held for %.0f s (guard.fault_exit_s): stopping for a restart", now - since)
            self.stop.set()

    def _complete_done(self) -> None:
        while self._inflight and self.clock.monotonic() >= self._retry_at(self._inflight[0]):
            head = self._inflight[0]
            if head.scored is None:
                head.scored = self.scoring.submit(head.items)  # the models were unavailable: again
            if not head.scored.done() or not self._complete(head):
                break
            self._inflight.popleft()
            self.health.finished()

    def _start_ready(self) -> None:
        while not self._reloading and self._room() and self._batch_ready():
            self._start_batch()

    def _scoring(self) -> int:
        """Batches that hold a scorer: those whose scoring has not finished (or that wait to be
        scored again). A single CPU scorer is also held by a scored head until it is completed,
        unless its store runs beside the next batch's scoring (worker.overlap: when storing is
        slow, so that a far database does not set the pace)."""
        busy = sum(1 for b in self._inflight if b.scored is None or not b.scored.done())
        if self._one_cpu_scorer and self._inflight:
            head = self._inflight[0]
            scored = head.scored is not None and head.scored.done()
            if scored and not (head.completing is not None and self._overlap.beside()):
                busy += 1
        return busy

    def _room(self) -> bool:
        """A scorer is free, and fewer than two batches per scorer are held, scored or not (the
        bound on the images held while a slow head is completed)."""
        return self._scoring() < self._max_inflight and len(self._inflight) < 2 * self._max_inflight

    def _pending(self) -> Future | None:
        """What the loop waits on when it has no room: the first of the head's store and the
        scorings not done. None when there is nothing to wait on: the head can be completed now,
        or a retry's backoff runs and nothing else is being scored."""
        if not self._inflight:
            return None
        head = self._inflight[0]
        if (head.finishing.done() if head.finishing is not None else head.scored is not None and head.scored.done()):
            return None
        futures = [head.finishing, *(b.scored for b in self._inflight)]
        pending = tuple(f for f in futures if f is not None and not f.done())
        if self._first is None or self._first[0] != pending:  # reused while nothing changes:
            self._first = (pending, first_of(list(pending)))  # each one adds a callback to all
        return self._first[1]

    def _maybe_reload(self) -> None:
        """A reload waits for the batches in flight to be committed; then the new watchlist
        takes over, and the events received meanwhile are prepared again for it."""
        if self.reloader is None:
            return
        self._reloading = self._reloading or self.reloader.wanted()
        if not self._reloading or self._inflight:
            return
        self._reloading = False
        pool = self.reloader.load()
        if pool is None:
            return
        old, self.scoring = self.scoring, pool
        old.close()
        self._max_inflight = self.batch.inflight * pool.size
        resubmit = self._prepare_executor.submit if self._prepare_executor else None
        self._buffer = deque(replace(w, prepared=resubmit(pool.prepare, w.message) if resubmit else None)
                             for w in self._buffer)
        log.info("reloaded: the new watchlist scores from now on (%d event(s) waiting re-prepared)", len(self._buffer))

    def close(self) -> None:
        self.scoring.close()

    def _start_batch(self) -> None:
        items = [self._buffer.popleft() for _ in range(min(self.batch.max_size, len(self._buffer)))]
        self.metrics.batch_size.observe(len(items))
        self._inflight.append(InFlight(items, self.scoring.submit(items)))

    @staticmethod
    def _retry_at(batch: InFlight) -> float:
        return max(batch.retry_at, batch.completing.retry_at if batch.completing else 0.0)

    # ------------------------------------------------------------ completion

    def _complete(self, batch: InFlight) -> bool:
        """Try to finish the head batch (its scoring is done). True when it is committed."""
        if batch.completing is None:
            assert batch.scored is not None
            try:
                scored: ScoredBatch = batch.scored.result()
            except ScoringUnavailable as exc:
                batch.scored = None  # score it again after the backoff
                return self._hold(batch, "models", str(exc))
            self._cleared("models")
            results = build(scored.judged, self.publishing, self.clock.now())
            dead = [r.reason is not None for r in results]
            if self._guard_trips(dead):
                batch.scored = self.scoring.done(scored)
                return self._hold(batch, "dead_letters", f"{sum(dead)} of {len(dead)} events in this batch would be "
                                  f"dead-lettered, over guard.dead_letter_fraction")
            self._dead_letters.add(dead)
            self.metrics.dead_letter_fraction.set(self._dead_letters.fraction_with([]))
            self._observe_stages(scored)
            self._overlap.scored(scored.score_s)
            batch.completing = Completing(results, [j.prepared for j in scored.judged],
                                          offsets_of([w.message for w in batch.items]), [w.received for w in batch.items])
        if self._complete_executor is None:
            return self.completion.attempt(batch.completing)
        if batch.finishing is None:
            batch.finishing = self._complete_executor.submit(self.completion.finish, batch.completing)
        if not batch.finishing.done():
            return False
        finishing, batch.finishing = batch.finishing, None
        self._overlap.stored(batch.completing.finish_s)
        if not finishing.result():
            return False  # a retry after its backoff (batch.completing.retry_at)
        self.completion.settle(batch.completing)
        return True

    def _guard_trips(self, dead: list[bool]) -> bool:
        limit = self.guard.dead_letter_fraction
        if not limit or not self._dead_letters.full_with(dead):
            return False
        return self._dead_letters.fraction_with(dead) > limit

    def _hold(self, batch: InFlight, cause: str, why: str) -> bool:
        """A fault of ours: nothing is dead-lettered or committed; retry after a backoff, and
        stop (for a restart) once it has lasted `guard.fault_exit_s`."""
        now = self.clock.monotonic()
        since = self._faulted_since.setdefault(cause, now)
        self.metrics.faulted.labels(cause).set(1)
        self.health.scoring(False)
        batch.attempts += 1
        batch.retry_at = now + self.retry.delay(batch.attempts)
        log.error("holding a batch of %d (%s, attempt %d): %s; nothing is dead-lettered or committed",
                  len(batch.items), cause, batch.attempts, why)
        if self.guard.fault_exit_s and now - since >= self.guard.fault_exit_s:
            self.fault = f"{cause}: {why}"
            log.error("held for %.0f s (guard.fault_exit_s): stopping for a restart", now - since)
            self.stop.set()
        return False

    def _cleared(self, cause: str) -> None:
        if self._faulted_since.pop(cause, None) is not None:
            self.metrics.faulted.labels(cause).set(0)
            log.info("%s: recovered", cause)
        if not self._faulted_since:
            self.health.scoring(True)

    def _observe_stages(self, scored: ScoredBatch) -> None:
        for j in scored.judged:
            if j.prepared.event is not None and j.prepared.rejection is None:
                self.metrics.stage.labels("fetch").observe(j.prepared.fetch_s)
                self.metrics.stage.labels("decode").observe(j.prepared.decode_s)
                if j.prepared.provenance is not None:
                    self.metrics.stage.labels("provenance").observe(j.prepared.provenance.seconds)
        if scored.score_s:
            self.metrics.stage.labels("score").observe(scored.score_s)
