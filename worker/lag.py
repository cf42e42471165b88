"""Consumer lag from the broker's own offsets, and the watchdog for a worker that owns no
partitions while its group's topic has a backlog.

The fetcher's high-water mark is not enough: it stops moving while a partition is paused, and
the worker pauses exactly when it has a backlog, so a lag computed from it under-reports when it
matters. Every `interval_s` the monitor asks the broker for the end offsets of every partition of
the topic and for the group's committed offsets (between two questions, the figures follow this
worker's own commits and fetches), and publishes:
- `aedr_consumer_lag{topic,partition}` for the partitions this worker owns: end minus the last
  offset committed (by this worker, else by the group; 0 before the group's first commit);
- `aedr_group_lag{topic}`: the same, summed over every partition of the topic;
- `aedr_assigned_partitions`.

The test broker (Tansu 0.6) answers ListOffsets with the first offset of the last record batch
plus one, not the end of the log. The monitor therefore takes the larger of that answer and the
fetcher's high-water mark, which is exact whenever the partition was fetched since its last
write. On a real Kafka cluster the broker's answer is exact and always the larger.
"""

from __future__ import annotations

import logging

from .clock import Clock
from .completion import OffsetLedger
from .messages import Consumer, Partition
from .metrics import Metrics

log = logging.getLogger(__name__)


class LagMonitor:
    def __init__(self, consumer: Consumer, topic: str, ledger: OffsetLedger, metrics: Metrics, clock: Clock,
                 interval_s: float = 10.0):
        self.consumer = consumer
        self.topic = topic
        self.ledger = ledger
        self.metrics = metrics
        self.clock = clock
        self.interval_s = interval_s
        self._next = 0.0
        self._shown: set[Partition] = set()
        self._unassigned_since: float | None = None
        self.group_lag: int | None = None
        self._partitions: set[Partition] | None = None  # the broker's last answer
        self._ends: dict[Partition, int] = {}
        self._group: dict[Partition, int] = {}

    def update(self, force: bool = False) -> None:
        """Asks the broker every `interval_s`, and at once when the assignment changed; in
        between (every turn of the loop, no I/O), recomputes the gauges from the last answer, the
        fetcher's high-water marks and this worker's own commits, so that a commit shows at once."""
        now = self.clock.monotonic()
        try:
            if now >= self._next or force or self.consumer.assignment() != self._shown:
                self._next = now + self.interval_s
                self._ask()
            if self._partitions is not None:
                self._publish(now)
        except Exception:  # a gauge must never stop the worker
            log.exception("lag: could not update the gauges")

    def _ask(self) -> None:
        try:
            partitions = self.consumer.partitions(self.topic) | self.consumer.assignment()
            ends = self.consumer.end_offsets(partitions)
            group = self.consumer.group_offsets(partitions)
        except Exception as exc:  # the broker is away: keep the last figures, try again later
            log.debug("lag: offsets not available (%s)", exc)
            return
        self._partitions, self._ends, self._group = partitions, ends, group

    def _publish(self, now: float) -> None:
        assigned = self.consumer.assignment()
        partitions = self._partitions | assigned
        ours = self.ledger.committed
        lags: dict[Partition, int] = {}
        for tp in partitions:
            end = max(self._ends.get(tp, 0), (self.consumer.highwater(tp) if tp in assigned else None) or 0)
            base = ours.get(tp, self._group.get(tp))
            lags[tp] = max(0, end - (base or 0))
        for tp in self._shown - assigned:
            self.metrics.lag.remove(tp.topic, str(tp.partition))
        for tp in assigned:
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(lags.get(tp, 0))
        self._shown = set(assigned)
        self.group_lag = sum(lags.values())
        self.metrics.group_lag.labels(self.topic).set(self.group_lag)
        self.metrics.assigned_partitions.set(len(assigned))
        if assigned or not self.group_lag:
            self._unassigned_since = None
        elif self._unassigned_since is None:
            self._unassigned_since = now

    @property
    def unassigned_for(self) -> float:
        """Seconds this worker has owned no partition while the topic had a backlog (0: it owns
        some, or there is nothing to do)."""
        return 0.0 if self._unassigned_since is None else self.clock.monotonic() - self._unassigned_since
