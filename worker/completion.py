"""Where an event is stored and its offset committed: store → publish → commit, one batch at a
time, in order, retried with backoff until it succeeds.

The order is the delivery guarantee (at least once, nothing lost): a batch's offsets are
committed only after its rows are committed in the database and its alerts and dead letters are
acknowledged by the broker. Each step is done once per batch: a batch that was stored but not
published is not stored again (it would be harmless, since writes are idempotent, but slow).
A producer that keeps failing is replaced: kafka-python's producer can enter a fatal state
(after a broker restart, say) from which it never recovers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .clock import Clock
from .config import RetrySettings
from .health import Health
from .messages import Consumer, Partition, Producer
from .metrics import Metrics
from .outcomes import BatchResult
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
    """One batch on its way out: what to store and publish, which offsets it covers, and how far
    it got."""

    result: BatchResult
    offsets: Mapping[Partition, int]  # next offset to read, per partition
    received: Sequence[float]  # clock monotonic of each event, for latency
    stored: bool = False
    published: bool = False
    attempts: int = 0
    retry_at: float = 0.0

    @property
    def size(self) -> int:
        return len(self.received)


@dataclass
class Completion:
    store: Store
    producers: ProducerSlot
    consumer: Consumer
    metrics: Metrics
    clock: Clock
    health: Health
    retry: RetrySettings = field(default_factory=RetrySettings)
    committed: dict[Partition, int] = field(default_factory=dict)  # last offsets this worker committed
    committed_events: int = 0

    def attempt(self, batch: Completing) -> bool:
        """One try at finishing `batch`; True when done, else a retry is scheduled."""
        try:
            if not batch.stored:
                started = time.perf_counter()
                self.store.save(batch.result.rows)
                self.metrics.stage.labels("store").observe(time.perf_counter() - started)
                batch.stored = True
                self.health.store(True)
            if not batch.published:
                self.producers.producer.publish(batch.result.outbound, PUBLISH_TIMEOUT_S)
                batch.published = True
        except Exception as exc:
            batch.attempts += 1
            if not batch.stored:
                self.metrics.store_errors.inc()
                self.health.store(False)
            else:
                self.producers.replace()
            delay = self.retry.delay(batch.attempts)
            batch.retry_at = self.clock.monotonic() + delay
            log.warning("batch of %d not completed (attempt %d, %s: %s); retrying in %.1f s",
                        batch.size, batch.attempts, type(exc).__name__, str(exc)[:300], delay)
            return False
        self._commit(batch)
        self._count(batch)
        return True

    def _commit(self, batch: Completing) -> None:
        """Commit the batch's offsets for partitions still assigned: one that moved is its new
        owner's to commit (it resumes from the last commit; our stored rows deduplicate)."""
        assigned = self.consumer.assignment()
        mine = {tp: o for tp, o in batch.offsets.items() if tp in assigned}
        if not mine:
            return
        try:
            self.consumer.commit(mine)
        except Exception as exc:  # e.g. a rebalance in progress: rows are stored, events come again
            log.warning("offset commit failed (%s); the events will be redelivered and deduplicated", exc)
            return
        self.committed.update(mine)
        self.metrics.last_commit.set(self.clock.time())

    def _count(self, batch: Completing) -> None:
        now = self.clock.monotonic()
        for received in batch.received:
            self.metrics.event_latency.observe(now - received)
        for row in batch.result.rows:
            if row.status == "scored":
                self.metrics.events.labels("scored").inc()
                for a in row.attributions:
                    self.metrics.verdicts.labels(a.model, "match" if a.belongs else "no_match").inc()
        for reason in batch.result.reasons:
            self.metrics.events.labels("dead_lettered").inc()
            self.metrics.dlq.labels(reason.value).inc()
        self.metrics.alerts.inc(batch.result.alerts)
        count_provenance(self.metrics, batch.result)
        self.committed_events += batch.size


def offsets_of(messages: Sequence) -> dict[Partition, int]:
    """The next offset to read per partition after `messages` (each has .tp and .offset)."""
    out: dict[Partition, int] = {}
    for m in messages:
        out[m.tp] = max(out.get(m.tp, -1), m.offset + 1)
    return out
