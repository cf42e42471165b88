"""The stream worker: consume → prepare → micro-batch → score → store → alert/dead-letter → commit.

Delivery is at least once and nothing is lost:
- offsets are committed only after the batch's rows are committed in the database and its
  alerts and dead letters are acknowledged by the broker; writes are idempotent, so a batch
  that comes again after a crash or rebalance changes nothing;
- batches are scored on their own thread (one per device). On a GPU (`batch.inflight = 2`) a
  second batch is queued per scorer and the loop keeps polling, storing and committing beside
  the device. On a CPU (`inflight = 1`) the loop sleeps while a batch is scored: torch's
  threads fill the cores, and anything running beside them slows them more than it saves.
  Heartbeats run on the client's own thread either way; partitions are paused while
  `max_buffered` events wait, so memory stays bounded;
- a bad event becomes a dead letter with a reason and a `failed` row; an image that makes the
  model raise is found and dead-lettered too; the worker goes on;
- a store or broker failure is retried with backoff, polling (paused) all the while;
- on revoke nothing is dropped: fetched events are processed in order, and offsets are
  committed only for partitions still assigned; on stop, what was received is finished and
  committed (30 s at most), and the rest goes to the next owner uncommitted.

Kafka objects are used only through the few methods below (kafka-python's KafkaConsumer and
KafkaProducer have them); everything else is plain Python, testable without a broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol, Sequence

from .config import BatchSettings, DatabaseSettings
from .events import DECODE, InvalidEvent, UploadEvent, alert_message, decode_b64_image, decode_event, event_id_hint
from .fetch import Fetcher
from .images import ImageError, ImageLimits, decode_image
from .metrics import Metrics
from .scoring import ImageTooSmall
from .storage import EventOutcome, Store
from .watchlist import PreparedImage, Watchlist

log = logging.getLogger(__name__)


class Consumer(Protocol):
    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict: ...
    def pause(self, *partitions) -> None: ...
    def resume(self, *partitions) -> None: ...
    def assignment(self) -> set: ...
    def commit(self, offsets: dict | None = None) -> None: ...
    def highwater(self, partition) -> int | None: ...


class Producer(Protocol):
    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: list | None = None) -> Any: ...
    def flush(self, timeout: float | None = None) -> None: ...


@dataclass(frozen=True)
class Topics:
    alerts: str
    dlq: str


@dataclass
class Prepared:
    event: UploadEvent | None = None
    image: PreparedImage | None = None
    error: InvalidEvent | None = None


@dataclass
class Pending:
    """One consumed message on its way through the pipeline."""

    record: Any  # kafka ConsumerRecord: topic, partition, offset, key, value, headers
    received: float  # monotonic
    received_at: datetime
    prepared: Future | None  # None: prepared inline on the scoring thread


@dataclass
class InFlight:
    """The batch being scored or completed; completion is retried until it succeeds."""

    items: list[Pending]
    scored: Future  # -> list[list[Scores] | None], aligned with items
    outcomes: list[EventOutcome] | None = None
    messages: list[tuple[str, bytes, bytes | None, list]] | None = None
    stored: bool = False
    produced: bool = False
    attempts: int = 0
    retry_at: float = 0.0


def _tp(record: Any) -> Any:
    from kafka import TopicPartition

    return TopicPartition(record.topic, record.partition)


@dataclass
class Worker:
    consumer: Consumer
    producer: Producer
    store: Store
    watchlist: Watchlist
    fetcher: Fetcher
    metrics: Metrics
    topics: Topics
    batch: BatchSettings = field(default_factory=BatchSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    clock: Callable[[], float] = time.monotonic
    tp_factory: Callable[[Any], Any] = _tp
    stop_event: threading.Event = field(default_factory=threading.Event)
    # One scorer per device (replicas of the watchlist); batches go to them in turn.
    scorers: Sequence[Watchlist] = ()
    # Builds a new producer when publishing fails: a client in a fatal state never recovers.
    producer_factory: Callable[[], Producer] | None = None

    def __post_init__(self) -> None:
        self._buffer: deque[Pending] = deque()
        # Batches in order: the head is completed first. With two per scorer, a scorer always
        # has the next batch queued while the previous one is stored and committed.
        self._inflight: deque[InFlight] = deque()
        self._paused = False
        self._committed: dict[Any, int] = {}
        self._lag_partitions: set[Any] = set()
        # prepare_threads = 0: each batch is prepared on its scoring thread just before scoring.
        # On a CPU that beats overlapping it: concurrent work stalls torch's parallel regions.
        self._prepare_pool = (ThreadPoolExecutor(self.batch.prepare_threads, thread_name_prefix="prepare")
                              if self.batch.prepare_threads > 0 else None)
        self.scorers = tuple(self.scorers) or (self.watchlist,)
        self._score_pools = [ThreadPoolExecutor(1, thread_name_prefix=f"score{i}") for i in range(len(self.scorers))]
        self._next_scorer = 0
        # inflight = 1 (a CPU): while a batch is scored the loop sleeps on it instead of polling,
        # so nothing competes with the model's threads; 2 (a GPU): the CPU works beside the device.
        self._serial = self.batch.inflight == 1
        self._max_inflight = (self.batch.inflight if self.batch.inflight > 0 else 2) * len(self.scorers)
        self.metrics.batch_max_size.set(self.batch.max_size)
        self.metrics.models_loaded.set(len(self.watchlist.entries))
        self.committed_events = 0

    # ------------------------------------------------------------ lifecycle

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Consume until stopped (or `until()` is true); then finish cleanly."""
        try:
            while not self.stop_event.is_set() and not (until and until()):
                self.step()
        finally:
            self._drain()
            if self._prepare_pool:
                self._prepare_pool.shutdown(wait=True, cancel_futures=True)
            for pool in self._score_pools:
                pool.shutdown(wait=True)

    def step(self) -> None:
        """One turn of the loop: poll, flow control, advance the batch."""
        if self._serial and len(self._inflight) >= self._max_inflight:
            wait([self._inflight[0].scored], timeout=1.0)  # heartbeats run on the client's own thread
        records = self.consumer.poll(timeout_ms=self._poll_timeout_ms(), max_records=self.batch.max_buffered)
        now = self.clock()
        received_at = datetime.now(timezone.utc)
        for messages in records.values():
            for record in messages:
                future = self._prepare_pool.submit(self._prepare, record) if self._prepare_pool else None
                self._buffer.append(Pending(record, now, received_at, future))
        self._flow_control()
        self._advance()
        self._update_lag()

    # ------------------------------------------------------------ rebalance

    def on_partitions_revoked(self, revoked: Sequence[Any]) -> None:
        """Log only. kafka-python 3 calls this on its IO thread, where blocking calls (commit)
        are refused and the main loop keeps running, so nothing here touches the loop's state.
        Correctness does not need it: every fetched event is still processed in order and
        stored idempotently, and offsets are committed only for partitions assigned at commit
        time. A partition that moves is resumed by its new owner from the last commit (the
        overlap is deduplicated); one handed back keeps its fetch position, and we still hold
        its events in order. Buffered events are not dropped: under the eager protocol the
        client preserves positions of partitions it gets back, so dropping would skip them."""
        log.info("revoked %d partition(s)", len(revoked))

    def on_partitions_assigned(self, assigned: Sequence[Any]) -> None:
        log.info("assigned %d partition(s)", len(assigned))

    # ------------------------------------------------------------ stages

    def _prepare(self, record: Any) -> Prepared:
        """Decode, fetch, decode the image, crop and GLCM for every model (on the pool)."""
        try:
            event = decode_event(record.value, self.image_limits.max_bytes)
        except InvalidEvent as exc:
            return Prepared(error=exc)
        try:
            started = time.perf_counter()
            if event.image_b64 is not None:
                data = decode_b64_image(event.image_b64, self.image_limits.max_bytes)
            else:
                data = self.fetcher.fetch(event.image_url or "")
            self.metrics.stage.labels("fetch").observe(time.perf_counter() - started)
            started = time.perf_counter()
            try:
                pixels = decode_image(data, self.image_limits)
                image = self.watchlist.prepare(pixels)
            except ImageError as exc:
                raise InvalidEvent(exc.reason, str(exc)) from None
            except ImageTooSmall as exc:
                raise InvalidEvent(DECODE, str(exc)) from None
            self.metrics.stage.labels("decode").observe(time.perf_counter() - started)
            return Prepared(event=event, image=image)
        except InvalidEvent as exc:
            return Prepared(event=event, error=exc)
        except Exception as exc:  # a bug in a decoder must not kill the worker: dead-letter it
            log.exception("unexpected error preparing %s/%s@%s", record.topic, record.partition, record.offset)
            return Prepared(event=event, error=InvalidEvent(DECODE, f"internal error: {type(exc).__name__}"))

    def _score(self, scorer: Watchlist, items: list[Pending]) -> list[list | None]:
        """On a scoring thread: prepare (or wait for preparation), score every valid image."""
        for p in items:
            if p.prepared is None:
                p.prepared = Future()
                p.prepared.set_result(self._prepare(p.record))
        prepared = [p.prepared.result() for p in items]
        valid = [i for i, p in enumerate(prepared) if p.image is not None]
        started = time.perf_counter()
        out: list[list | None] = [None] * len(items)
        try:
            scores = scorer.score([prepared[i].image for i in valid]) if valid else []
        except Exception:  # e.g. an image that crashes a model: find it, dead-letter it, go on
            log.exception("scoring a batch of %d failed; scoring its images one by one", len(valid))
            scores = []
            for i in list(valid):
                try:
                    scores.append(scorer.score([prepared[i].image])[0])
                except Exception as exc:
                    prepared[i].error = InvalidEvent(DECODE, f"scoring failed: {type(exc).__name__}: {exc}"[:300])
                    valid.remove(i)
        if valid:
            self.metrics.stage.labels("score").observe(time.perf_counter() - started)
        for i, s in zip(valid, scores):
            out[i] = s
        return out

    # ------------------------------------------------------------ batching

    def _batch_ready(self) -> bool:
        if not self._buffer:
            return False
        if len(self._buffer) >= self.batch.max_size or self.stop_event.is_set():
            return True
        return (self.clock() - self._buffer[0].received) * 1000.0 >= self.batch.max_wait_ms

    def _poll_timeout_ms(self) -> int:
        if self._inflight:
            if self._inflight[0].scored.done():
                return 0 if self._serial else 5
            # Every scorer already has its next batch queued: nothing is gained by waking often,
            # and each wake-up takes CPU (and the GIL) from the scoring thread (PERFORMANCE.md).
            return 100 if len(self._inflight) >= self._max_inflight else 20
        if self._buffer:
            waited = (self.clock() - self._buffer[0].received) * 1000.0
            return int(max(0.0, min(self.batch.max_wait_ms - waited, 100)))
        return 100

    def _flow_control(self) -> None:
        """Pause every assigned partition while the buffer is full (again each turn: a rebalance
        may add unpaused partitions); resume them all once it has room."""
        full = len(self._buffer) >= self.batch.max_buffered
        assigned = self.consumer.assignment()
        if full and assigned:
            self.consumer.pause(*assigned)
            self._paused = True
        elif not full and self._paused:
            self.consumer.resume(*assigned)
            self._paused = False

    def _advance(self) -> None:
        while self._inflight and self._inflight[0].scored.done() and self.clock() >= self._inflight[0].retry_at:
            if not self._try_complete(self._inflight[0]):
                break
            self._inflight.popleft()
        while len(self._inflight) < self._max_inflight and self._batch_ready():
            self._start_batch()

    def _start_batch(self) -> None:
        items = [self._buffer.popleft() for _ in range(min(self.batch.max_size, len(self._buffer)))]
        self.metrics.batch_size.observe(len(items))
        k = self._next_scorer
        self._next_scorer = (k + 1) % len(self.scorers)
        self._inflight.append(InFlight(items, self._score_pools[k].submit(self._score, self.scorers[k], items)))

    # ------------------------------------------------------------ completion

    def _build(self, batch: InFlight) -> None:
        """Rows and messages of a scored batch (once; kept across retries)."""
        scored_at = datetime.now(timezone.utc)
        stamp = scored_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        results = batch.scored.result()
        outcomes: list[EventOutcome] = []
        messages: list[tuple[str, bytes, bytes | None, list]] = []
        for pending, scores in zip(batch.items, results):
            r = pending.record
            prepared: Prepared = pending.prepared.result()
            if scores is None:
                error = prepared.error or InvalidEvent(DECODE, "not prepared")
                event_id = (prepared.event.event_id if prepared.event else None) or event_id_hint(r.value)
                event_id = event_id or f"unparsed:{r.topic}/{r.partition}/{r.offset}"
                outcomes.append(EventOutcome(
                    event_id=event_id, topic=r.topic, partition=r.partition, offset=r.offset, status="failed",
                    received_at=pending.received_at, error=f"{error.reason}: {error}"[:2000],
                ))
                headers = list(r.headers or []) + [
                    ("aedr.reason", error.reason.encode()),
                    ("aedr.error", str(error).encode("utf-8", "replace")[:1000]),
                    ("aedr.source", f"{r.topic}/{r.partition}/{r.offset}".encode()),
                    ("aedr.failed_at", stamp.encode()),
                ]
                messages.append((self.topics.dlq, r.value if r.value is not None else b"", r.key, headers))
                continue
            attributions = self.watchlist.verdicts(scores)
            matches = [
                {"model": a.model, "score": a.score, "threshold": a.threshold} for a in attributions if a.belongs
            ]
            best = min(matches, key=lambda m: m["score"] / m["threshold"])["model"] if matches else None
            event = prepared.event
            assert event is not None
            outcomes.append(EventOutcome(
                event_id=event.event_id, topic=r.topic, partition=r.partition, offset=r.offset, status="scored",
                received_at=pending.received_at, scored_at=scored_at, best_match=best, attributions=tuple(attributions),
            ))
            if matches:
                messages.append((self.topics.alerts, alert_message(event, matches, stamp), event.event_id.encode(), []))
        batch.outcomes, batch.messages = outcomes, messages

    def _try_complete(self, batch: InFlight) -> bool:
        """Store, publish, commit; on failure schedule a retry with backoff. True when done."""
        try:
            if batch.outcomes is None:
                self._build(batch)
            if not batch.stored:
                started = time.perf_counter()
                self.store.save(batch.outcomes or [])
                self.metrics.stage.labels("store").observe(time.perf_counter() - started)
                batch.stored = True
            if not batch.produced:
                futures = [self.producer.send(t, value=v, key=k, headers=h) for t, v, k, h in batch.messages or []]
                self.producer.flush(timeout=30)
                for f in futures:
                    f.get(timeout=30)  # raises if the broker did not acknowledge
                batch.produced = True
            self._commit(batch)
        except Exception as exc:
            batch.attempts += 1
            if not batch.stored:
                self.metrics.store_errors.inc()
            elif not batch.produced and self.producer_factory is not None:
                self._replace_producer()
            delay = min(self.database.retry_max_s, self.database.retry_initial_s * 2 ** (batch.attempts - 1))
            batch.retry_at = self.clock() + delay
            log.warning("batch of %d not completed (attempt %d, %s: %s); retrying in %.1f s",
                        len(batch.items), batch.attempts, type(exc).__name__, exc, delay)
            return False
        return True

    def _replace_producer(self) -> None:
        try:
            self.producer.close(timeout=0)  # type: ignore[attr-defined]
        except Exception:
            pass
        try:
            self.producer = self.producer_factory()  # type: ignore[misc]
            log.info("publishing failed: replaced the producer")
        except Exception as exc:  # broker still away: the next attempt tries again
            log.warning("could not create a new producer yet: %s", exc)

    def _commit(self, batch: InFlight) -> None:
        from kafka.structs import OffsetAndMetadata

        offsets: dict[Any, int] = {}
        for p in batch.items:
            tp = self.tp_factory(p.record)
            offsets[tp] = max(offsets.get(tp, -1), p.record.offset + 1)
        assigned = self.consumer.assignment()  # a partition that moved is its new owner's to commit
        mine = {tp: o for tp, o in offsets.items() if tp in assigned}
        if mine:
            try:
                self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in mine.items()})
            except Exception as exc:  # e.g. CommitFailedError after a rebalance: rows are stored,
                log.warning("offset commit failed (%s); events will be redelivered and deduplicated", exc)
            else:
                self._committed.update(mine)
                self.metrics.last_commit.set(time.time())
        now = self.clock()
        for p, outcome in zip(batch.items, batch.outcomes or []):
            self.metrics.event_latency.observe(now - p.received)
            if outcome.status == "scored":
                self.metrics.events.labels("scored").inc()
                for a in outcome.attributions:
                    self.metrics.verdicts.labels(a.model, "match" if a.belongs else "no_match").inc()
            else:
                self.metrics.events.labels("dead_lettered").inc()
                self.metrics.dlq.labels((outcome.error or "decode").split(":", 1)[0]).inc()
        self.metrics.alerts.inc(sum(1 for m in batch.messages or [] if m[0] == self.topics.alerts))
        self.committed_events += len(batch.items)

    def _drain(self) -> None:
        """On stop: score, store and commit what was already received (30 s at most); what is
        left is not committed and goes to the next owner."""
        deadline = self.clock() + 30.0
        while (self._buffer or self._inflight) and self.clock() < deadline:
            while self._buffer and len(self._inflight) < self._max_inflight:
                self._start_batch()
            self._finish_one(deadline)
        if self._buffer or self._inflight:
            log.error("stopped with %d event(s) unfinished; they will be redelivered",
                      len(self._buffer) + sum(len(b.items) for b in self._inflight))
        self._inflight.clear()
        self._buffer.clear()

    def _finish_one(self, deadline: float) -> None:
        """Complete the head batch, retrying with backoff until the deadline."""
        batch = self._inflight[0]
        batch.scored.result()
        while not self._try_complete(batch):
            if self.clock() >= deadline:
                return
            time.sleep(max(0.0, min(batch.retry_at - self.clock(), deadline - self.clock())))
        self._inflight.popleft()

    # ------------------------------------------------------------ lag

    def _update_lag(self) -> None:
        """Lag per assigned partition; a partition that moved is dropped from the gauge, or the
        summed lag (dashboards, scaling) would count it twice."""
        assigned = self.consumer.assignment()
        for tp in self._lag_partitions - assigned:
            self.metrics.lag.remove(tp.topic, str(tp.partition))
        self._lag_partitions = set(assigned)
        for tp in assigned:
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            committed = self._committed.get(tp)
            if committed is None:
                first = next((p.record.offset for p in self._buffer if self.tp_factory(p.record) == tp), None)
                committed = first if first is not None else high
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - committed))
