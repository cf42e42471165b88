"""Where an event is stored and its offset committed: store → publish → commit, one batch at a
time, in order, retried with backoff until it succeeds.

The order is the delivery guarantee (at least once, nothing lost): a batch's offsets are
committed only after its rows are committed in the database and its alerts and dead letters are
acknowledged by the broker. Each step is done once per batch: a batch that was stored but not
published is not stored again, and records the broker acknowledged are not sent again.

A failure that belongs to one event is isolated, so it cannot stop the partition:
- rows the database refuses as data (not a lost connection) are found by storing halves of the
  batch; such an event is stored as `failed` with `Reason.INTERNAL` and dead-lettered;
- a record the broker refuses as too large is published again without its payload, marked
  (`outcomes.shrink`).
Everything else (a database or broker that is away) is retried with backoff, and a producer that
keeps failing is replaced: kafka-python's producer can enter a fatal state (after a broker
restart, say) from which it never recovers.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Mapping, Sequence

from .clock import Clock
from .config import RetrySettings
from .events import Reason
from .health import Health
from .messages import Consumer, Partition, Producer, PublishError
from .metrics import Metrics
from .outcomes import EventResult, Publishing, clean_text, reject, shrink, stamp
from .prepare import Prepared, Rejection
from .provenance_step import count_provenance
from .storage import Store

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 30.0


class ProducerSlot:
    """The current producer, and how to make a new one when it breaks."""

    def __init__(self, factory: Callable[[], Producer]):
        self._factory = factory
        self._producer: Producer | None = None

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = self._factory()
        return self._producer

    def replace(self) -> None:
        """Drop the current producer; the next publish makes a new one."""
        old, self._producer = self._producer, None
        if old is not None:
            try:
                old.close(timeout_s=0)
            except Exception as exc:  # a broken client may fail to close: it is dropped anyway
                log.debug("closing the old producer: %s", exc)

    def close(self, timeout_s: float = 10) -> None:
        if self._producer is not None:
            self._producer.close(timeout_s=timeout_s)
            self._producer = None


@dataclass
class Completing:
    """One batch on its way out: each event's row and record, the offsets it covers, and how far
    it got."""

    results: list[EventResult]
    prepared: list[Prepared]  # aligned with results: what an event is rebuilt from if it must fail
    offsets: Mapping[Partition, int]  # next offset to read, per partition
    received: Sequence[float]  # clock monotonic of each event, for latency
    stored: bool = False
    acked: set[int] = field(default_factory=set)  # results whose record the broker acknowledged
    already: set[int] = field(default_factory=set)  # results whose record went out before (not again)
    attempts: int = 0
    retry_at: float = 0.0
    finish_s: float = 0.0  # how long the last try at storing and publishing took (the completion's clock)

    @property
    def size(self) -> int:
        return len(self.results)

    @property
    def published(self) -> bool:
        return all(i in self.acked or i in self.already or r.outbound is None for i, r in enumerate(self.results))


class OffsetLedger:
    """Per partition, how far work is finished (stored and published) and how far it is
    committed. The rebalance listener (`worker.messages.Rebalancing`, on the client's IO thread)
    commits the difference before a partition moves; the lock keeps the two threads apart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._finished: dict[Partition, int] = {}
        self._committed: dict[Partition, int] = {}

    @property
    def committed(self) -> dict[Partition, int]:
        with self._lock:
            return dict(self._committed)

    def finished(self, offsets: Mapping[Partition, int]) -> None:
        with self._lock:
            for tp, offset in offsets.items():
                self._finished[tp] = max(self._finished.get(tp, -1), offset)

    def uncommitted(self, partitions: Collection[Partition]) -> dict[Partition, int]:
        with self._lock:
            return {tp: o for tp, o in self._finished.items()
                    if tp in partitions and o > self._committed.get(tp, -1)}

    def committed_elsewhere(self, offsets: Mapping[Partition, int]) -> None:
        with self._lock:
            for tp, offset in offsets.items():
                self._committed[tp] = max(self._committed.get(tp, -1), offset)

    def partitions_revoked(self, partitions: Collection[Partition]) -> None:
        """They moved: what we knew of their offsets is another member's business now, and stale
        if they come back (committing it then would move the group's offset backwards)."""
        self._forget(partitions)
        log.info("revoked %d partition(s)", len(partitions))

    def partitions_assigned(self, partitions: Collection[Partition]) -> None:
        self._forget(partitions)
        log.info("assigned %d partition(s)", len(partitions))

    def _forget(self, partitions: Collection[Partition]) -> None:
        with self._lock:
            for tp in partitions:
                self._finished.pop(tp, None)
                self._committed.pop(tp, None)


@dataclass
class Completion:
    """Store → publish → commit for one batch at a time, with the retries and the isolation of
    one event's failure that each step needs.

    Longer than this project's other classes on purpose: the three steps share the per-batch
    progress (what is stored, what the broker acknowledged, what is left to commit) that makes a
    retry do each step once; split across classes, that progress would have to be passed back
    and forth, and the order that is the delivery guarantee would no longer read in one place."""

    store: Store
    producers: ProducerSlot
    consumer: Consumer
    metrics: Metrics
    clock: Clock
    health: Health
    publishing: Publishing
    retry: RetrySettings = field(default_factory=RetrySettings)
    ledger: OffsetLedger = field(default_factory=OffsetLedger)
    committed_events: int = 0
    _commit_retry_at: float = 0.0
    _unmarked: list[tuple[str, str]] = field(default_factory=list)  # published, not yet in the store

    def __post_init__(self) -> None:
        self._busy = threading.Lock()  # `finish` may run on a thread of its own (worker.pipeline)

    def attempt(self, batch: Completing) -> bool:
        """One try at finishing `batch` and committing it; True when done, else a retry is scheduled."""
        if not self.finish(batch):
            return False
        self.settle(batch)
        return True

    def finish(self, batch: Completing) -> bool:
        """Store and publish `batch` (no consumer call: this may run beside the loop, one batch at
        a time); True when both are done, else a retry is scheduled (`batch.retry_at`)."""
        with self._busy:
            started = self.clock.monotonic()
            try:
                return self._finish(batch)
            finally:
                batch.finish_s = self.clock.monotonic() - started

    def settle(self, batch: Completing) -> None:
        """A finished batch: commit its offsets and count it (on the loop's thread)."""
        self._commit(batch)
        self._count(batch)

    def _finish(self, batch: Completing) -> bool:
        try:
            if not batch.stored:
                started = time.perf_counter()
                self._store(batch)
                self.metrics.stage.labels("store").observe(time.perf_counter() - started)
                batch.stored = True
                self.health.store(True)
                log.info("stored %s", _ranges(batch))  # one line per batch: what was processed, for audits
            if not batch.published:
                self._publish(batch)
        except Exception as exc:
            batch.attempts += 1
            if not batch.stored:
                self.metrics.store_errors.inc()
                self.health.store(False)
            elif not isinstance(exc, PublishError) or any(k != "too_large" for k in exc.failed.values()):
                self.producers.replace()
            delay = self.retry.delay(batch.attempts)
            batch.retry_at = self.clock.monotonic() + delay
            log.warning("batch of %d not completed (attempt %d, %s: %s); retrying in %.1f s",
                        batch.size, batch.attempts, type(exc).__name__, str(exc)[:300], delay)
            return False
        return True

    # ------------------------------------------------------------ store

    def _store(self, batch: Completing) -> None:
        """Save the batch in one transaction (with the records published since the last save);
        if the database refuses some rows as data, find them by halves, and store those events as
        failed instead. Notes which records went out before: they are not published again."""
        marks = list(self._unmarked)
        try:
            stored = dict(enumerate(self.store.save([r.row for r in batch.results], marks)))
        except Exception as exc:
            if not self.store.is_data_error(exc):
                raise
            log.warning("the database refused a batch of %d as data (%s); isolating the rows", batch.size,
                        type(exc).__name__)
            marks = []
            stored, refused = self._save_isolating(batch, list(range(batch.size)))
            for i, exc in refused:
                rejection = Rejection(Reason.INTERNAL, clean_text(f"could not be stored: {type(exc).__name__}: {exc}", 300))
                r = batch.results[i]
                batch.results[i] = reject(batch.prepared[i], rejection, r.row.received_at, self.publishing,
                                          stamp(self.clock.now()))
                stored[i] = self.store.save([batch.results[i].row])[0]  # a bare failed row: not data
        del self._unmarked[:len(marks)]
        batch.already = {i for i, r in enumerate(batch.results)
                         if r.keys and set(r.keys) <= stored[i].published}

    def _save_isolating(self, batch: Completing, indices: list[int]) -> tuple[dict, list[tuple[int, Exception]]]:
        try:
            return dict(zip(indices, self.store.save([batch.results[i].row for i in indices]))), []
        except Exception as exc:
            if not self.store.is_data_error(exc):
                raise
            if len(indices) == 1:
                return {}, [(indices[0], exc)]
        half = len(indices) // 2
        first, bad_first = self._save_isolating(batch, indices[:half])
        second, bad_second = self._save_isolating(batch, indices[half:])
        return {**first, **second}, bad_first + bad_second

    # ------------------------------------------------------------ publish

    def _publish(self, batch: Completing) -> None:
        pending = [i for i, r in enumerate(batch.results)
                   if r.outbound is not None and i not in batch.acked and i not in batch.already]
        try:
            self.producers.producer.publish([batch.results[i].outbound for i in pending], PUBLISH_TIMEOUT_S)
        except PublishError as exc:
            failed = {pending[k]: kind for k, kind in exc.failed.items()}
            self._acked(batch, [i for i in pending if i not in failed])
            for i, kind in failed.items():
                r = batch.results[i]
                if kind == "too_large" and r.outbound is not None:
                    log.warning("%s %s refused as too large; publishing it without its payload",
                                "dead letter" if r.reason else "alert", r.row.event_id)
                    batch.results[i] = replace(r, outbound=shrink(r.outbound, dead_letter=r.reason is not None))
            raise
        self._acked(batch, pending)

    def _acked(self, batch: Completing, indices: list[int]) -> None:
        """Acknowledged: remembered in the store with the next batch's save (a crash before then
        publishes them again: at least once)."""
        batch.acked.update(indices)
        self._unmarked += [(batch.results[i].row.event_id, key) for i in indices for key in batch.results[i].keys]

    def flush_published(self, timeout_s: float = 5.0) -> None:
        """Remember now what went out (on stop; not while a store hung past the drain is running)."""
        if not self._busy.acquire(timeout=timeout_s):
            log.warning("a store is still running; what was published since the last one is not marked")
            return
        try:
            if self._unmarked:
                self.store.mark_published(self._unmarked)
                self._unmarked.clear()
        finally:
            self._busy.release()

    # ------------------------------------------------------------ commit

    def _commit(self, batch: Completing) -> None:
        """The batch is finished: commit its offsets for partitions still assigned. One that moved
        is its new owner's to commit (it resumes from the last commit; our rows deduplicate)."""
        assigned = self.consumer.assignment()
        self.ledger.finished({tp: o for tp, o in batch.offsets.items() if tp in assigned})
        self.commit_pending(assigned)

    def commit_pending(self, assigned: frozenset[Partition] | None = None) -> None:
        """Commit finished work that is not committed yet. A commit refused (during a rebalance,
        say) is kept and tried again, at most once a second, until it goes through or the
        partition moves; the rebalance listener also commits it before the partition moves."""
        now = self.clock.monotonic()
        if assigned is None and now < self._commit_retry_at:
            return
        mine = self.ledger.uncommitted(assigned if assigned is not None else self.consumer.assignment())
        if not mine:
            return
        try:
            self.consumer.commit(mine)
        except Exception as exc:
            self._commit_retry_at = now + 1.0
            log.warning("offset commit failed (%s); trying again", str(exc)[:200])
            return
        self.ledger.committed_elsewhere(mine)
        self.metrics.last_commit.set(self.clock.time())

    def _count(self, batch: Completing) -> None:
        now = self.clock.monotonic()
        for received in batch.received:
            self.metrics.event_latency.observe(now - received)
        for i, r in enumerate(batch.results):
            if r.reason is not None:
                self.metrics.events.labels("dead_lettered").inc()
                if i not in batch.already:
                    self.metrics.dlq.labels(r.reason.value).inc()
                continue
            self.metrics.events.labels("scored").inc()
            for a in r.row.attributions:
                self.metrics.verdicts.labels(a.model, "match" if a.belongs else "no_match", a.mode).inc()
        self.metrics.alerts.inc(sum(1 for i, r in enumerate(batch.results) if r.alerted and i not in batch.already))
        count_provenance(self.metrics, batch.results)
        self.committed_events += batch.size


def offsets_of(messages: Sequence) -> dict[Partition, int]:
    """The next offset to read per partition after `messages` (each has .tp and .offset)."""
    out: dict[Partition, int] = {}
    for m in messages:
        out[m.tp] = max(out.get(m.tp, -1), m.offset + 1)
    return out


def _ranges(batch: Completing) -> str:
    """topic/partition:first-last for each partition of a batch (for the processing log)."""
    spans: dict[tuple[str, int], list[int]] = {}
    for r in batch.results:
        spans.setdefault((r.row.topic, r.row.partition), []).append(r.row.offset)
    return " ".join(f"{t}/{p}:{min(o)}-{max(o)}" for (t, p), o in sorted(spans.items()))
