"""In-memory stand-ins for the broker, the clock and the scoring threads, for fast tests.

They implement the same interfaces as the real parts (`worker.messages.Consumer` and
`Producer`, `worker.clock.Clock`, `concurrent.futures.Executor`), and the broker fakes pass the
same contract suite as kafka-python against a real broker
(tests/integration/test_broker_contract.py). With `FakeClock` and `InlineExecutor`, the worker
loop runs deterministically: no thread, no sleep.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Collection, Mapping, Sequence

from .messages import Headers, Message, Outbound, Partition, PublishError


class FakeClock:
    """Time that moves only when told (or when something sleeps on it)."""

    def __init__(self, start: float = 1000.0):
        self.t = start
        self._epoch = datetime(2026, 11, 28, tzinfo=timezone.utc)

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return self._epoch.timestamp() + self.t

    def now(self) -> datetime:
        return self._epoch + timedelta(seconds=self.t)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


class InlineExecutor(Executor):
    """Runs each task at once, on the caller's thread; the future is done when `submit` returns."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the future carries it, as a thread pool's would
            future.set_exception(exc)
        return future


class ManualExecutor(Executor):
    """A scoring thread whose timing the test controls: a task runs when the test says
    (`run_next`, `run_all`) or when the loop waits for its result (`wait`). With `hung`, waiting
    never finishes anything: the clock moves by the timeout instead, as for a stuck device."""

    def __init__(self, clock: FakeClock | None = None, hung: bool = False):
        self.clock = clock
        self.hung = hung
        self.pending: list[tuple[Future, Callable, tuple, dict]] = []
        self.waits = 0

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        self.pending.append((future, fn, args, kwargs))
        return future

    def run_next(self) -> bool:
        if not self.pending:
            return False
        future, fn, args, kwargs = self.pending.pop(0)
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return True

    def run_all(self) -> None:
        while self.run_next():
            pass

    def wait(self, future: Future, timeout: float) -> bool:
        self.waits += 1
        if self.hung:
            if self.clock is not None:
                self.clock.advance(timeout)
            return future.done()
        while not future.done() and self.run_next():
            pass
        return future.done()


@dataclass
class _Record:
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int


class CommitFailed(RuntimeError):
    """The fake group refused the commit (as after a rebalance)."""


@dataclass
class FakeBroker:
    """Topics of partitioned logs and consumer groups' committed offsets, in memory. Groups have
    one member each (a consumer gets every partition of its topic) unless a test moves
    partitions away with `FakeConsumer.revoke`."""

    clock: FakeClock | None = None
    default_partitions: int = 4
    logs: dict[Partition, list[_Record]] = field(default_factory=dict)
    committed: dict[tuple[str, Partition], int] = field(default_factory=dict)

    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        for p in range(partitions or self.default_partitions):
            self.logs.setdefault(Partition(topic, p), [])

    def partitions(self, topic: str) -> list[Partition]:
        return sorted(tp for tp in self.logs if tp.topic == topic)

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, headers: Headers = (),
                partition: int | None = None) -> tuple[int, int]:
        """Append a record; without `partition`, keys are hashed and keyless records go to 0."""
        if not self.partitions(topic):
            self.create_topic(topic)
        count = len(self.partitions(topic))
        if partition is None:
            partition = (sum(key) % count) if key else 0
        log = self.logs[Partition(topic, partition)]
        stamp = int((self.clock.time() if self.clock else 0) * 1000)
        log.append(_Record(key, value, tuple(headers), stamp))
        return partition, len(log) - 1

    def records(self, topic: str) -> list[Message]:
        """Every record of a topic, partition by partition."""
        return [Message(tp.topic, tp.partition, o, r.key, r.value, r.headers, r.timestamp_ms)
                for tp in self.partitions(topic) for o, r in enumerate(self.logs[tp])]

    def consumer(self, topic: str, group: str, rebalancing: Any = None) -> "FakeConsumer":
        return FakeConsumer(self, topic, group, rebalancing)

    def producer(self, max_request_size: int = 32 * 1024 * 1024) -> "FakeProducer":
        return FakeProducer(self, max_request_size)


class FakeConsumer:
    """A `Consumer` on a `FakeBroker`: starts from the group's committed offsets (else 0). With
    `rebalancing` (worker.messages.Rebalancing), a partition that moves is first committed up to
    the finished work, as kafka_io's listener does."""

    def __init__(self, broker: FakeBroker, topic: str, group: str, rebalancing: Any = None):
        self.broker = broker
        self.topic = topic
        self.group = group
        self.rebalancing = rebalancing
        if not broker.partitions(topic):
            broker.create_topic(topic)
        self._assigned = set(broker.partitions(topic))
        self.position = {tp: broker.committed.get((group, tp), 0) for tp in self._assigned}
        self.paused: set[Partition] = set()
        self.commits: list[dict[Partition, int]] = []
        self.fail_commits = 0  # refuse the next N commits
        self.polls = 0
        self.pause_calls = 0
        self.closed = False
        self._seen_high: dict[Partition, int] = {}
        if rebalancing is not None:
            rebalancing.partitions_assigned(sorted(self._assigned))

    def poll(self, timeout_ms: int, max_records: int) -> list[Message]:
        self.polls += 1
        out: list[Message] = []
        for tp in sorted(self._assigned - self.paused):
            log = self.broker.logs[tp]
            self._seen_high[tp] = len(log)
            while self.position[tp] < len(log) and len(out) < max_records:
                o = self.position[tp]
                r = log[o]
                out.append(Message(tp.topic, tp.partition, o, r.key, r.value, r.headers, r.timestamp_ms))
                self.position[tp] = o + 1
        if not out and self.broker.clock is not None:  # an idle poll waits its timeout
            self.broker.clock.advance(timeout_ms / 1000.0)
        return out

    def pause(self, partitions: Collection[Partition]) -> None:
        self.pause_calls += 1
        self.paused |= set(partitions)

    def resume(self, partitions: Collection[Partition]) -> None:
        self.paused -= set(partitions)

    def assignment(self) -> frozenset[Partition]:
        return frozenset(self._assigned)

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise CommitFailed("fake group: commit refused (rebalance in progress)")
        unknown = set(offsets) - self._assigned
        if unknown:
            raise CommitFailed(f"fake group: {sorted(unknown)} not assigned to this member")
        self.commits.append(dict(offsets))
        for tp, offset in offsets.items():
            self.broker.committed[(self.group, tp)] = offset

    def highwater(self, partition: Partition) -> int | None:
        return self._seen_high.get(partition) if partition in self._assigned else None

    def partitions(self, topic: str) -> frozenset[Partition]:
        return frozenset(self.broker.partitions(topic))

    def end_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        return {tp: len(self.broker.logs[tp]) for tp in partitions}

    def start_offsets(self, partitions: Collection[Partition], since_ms: int | None) -> dict[Partition, int | None]:
        out: dict[Partition, int | None] = {}
        for tp in partitions:
            log = self.broker.logs[tp]
            if since_ms is None:
                out[tp] = 0
            else:
                out[tp] = next((o for o, r in enumerate(log) if r.timestamp_ms >= since_ms), None)
        return out

    def seek(self, partition: Partition, offset: int) -> None:
        self.position[partition] = offset

    def group_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int | None]:
        return {tp: self.broker.committed.get((self.group, tp)) for tp in partitions}

    def close(self) -> None:
        self.closed = True

    # Test controls
    def revoke(self, partitions: Collection[Partition]) -> None:
        """Move `partitions` to another member of the group: finished work is committed first,
        while this member still owns them, as in a real rebalance."""
        if self.rebalancing is not None:
            finished = self.rebalancing.uncommitted(set(partitions))
            if finished:
                self.commit(finished)
                self.rebalancing.committed_elsewhere(finished)
            self.rebalancing.partitions_revoked(sorted(partitions))
        self._assigned -= set(partitions)

    def assign(self, partitions: Collection[Partition]) -> None:
        """Give `partitions` to this member: it resumes from the group's committed offsets."""
        new = set(partitions) - self._assigned
        self._assigned |= new
        for tp in new:
            self.position[tp] = self.broker.committed.get((self.group, tp), 0)
        if self.rebalancing is not None and new:
            self.rebalancing.partitions_assigned(sorted(new))


class FakeProducer:
    """A `Producer` on a `FakeBroker`. A record over `max_request_size` (key, value and headers)
    is refused as too large, as kafka-python's client does; `fail_next` makes the next N
    publishes fail as a broker that does not answer."""

    def __init__(self, broker: FakeBroker, max_request_size: int = 32 * 1024 * 1024):
        self.broker = broker
        self.max_request_size = max_request_size
        self.fail_next = 0
        self.published: list[Outbound] = []
        self.closed = False

    def publish(self, messages: Sequence[Outbound], timeout_s: float) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise PublishError({i: "error" for i in range(len(messages))}, "fake broker did not acknowledge")
        failed: dict[int, str] = {}
        for i, m in enumerate(messages):
            size = len(m.key or b"") + len(m.value or b"") + sum(len(k) + len(v) for k, v in m.headers)
            if size > self.max_request_size:
                failed[i] = "too_large"
                continue
            self.broker.produce(m.topic, m.value, m.key, m.headers)
            self.published.append(m)
        if failed:
            raise PublishError(failed, f"{len(failed)} record(s) larger than {self.max_request_size} bytes")

    def close(self, timeout_s: float = 0) -> None:
        self.closed = True
