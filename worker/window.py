"""A window of a topic: the records between two times, as the topic stood when the window was
opened. `aedr rescan` and `aedr dlq replay` read through one; it is a `worker.messages.Consumer`,
so a rescan runs through the same loop, stages and record as `aedr serve`.

- Start: per partition, the first offset at or after `since` (the broker's offsets-for-timestamp
  lookup), or the beginning; records older than `since` that the lookup could not skip (a broker
  that answers without timestamps) are skipped by their own timestamps.
- End: the broker's end offset when the window opened. A partition is finished once it was read
  past that end and then either polled empty or met a record written after the window opened
  (or after `until`): records that arrive later are not the window's. (The test broker reports
  the end of a partition as the first offset of its last batch plus one; reading on until the
  partition is quiet takes in that batch's other records too.)
"""

from __future__ import annotations

import logging
from typing import Collection, Mapping

from .messages import Message, Partition

log = logging.getLogger(__name__)


class Window:
    def __init__(self, reader, topic: str, since_ms: int | None, until_ms: int | None, opened_ms: int):
        self.reader = reader  # worker.kafka_io.KafkaConsumerAdapter from make_reader (or a fake)
        self.topic = topic
        self.since_ms = since_ms
        self.last_ms = min(until_ms, opened_ms) if until_ms is not None else opened_ms  # exclusive
        partitions = reader.assignment() or reader.partitions(topic)
        starts = reader.start_offsets(partitions, since_ms)
        self.ends = dict(reader.end_offsets(partitions))
        self.starts: dict[Partition, int] = {}
        self._finished: set[Partition] = set()
        self._position: dict[Partition, int] = {}
        for tp in partitions:
            start = starts.get(tp)
            if start is None or not self.ends.get(tp, 0):
                self._finished.add(tp)  # nothing in the window
                continue
            reader.seek(tp, start)
            self.starts[tp] = start
            self._position[tp] = start
        reader.pause(self._finished)
        self.skipped = 0  # records read but outside the window

    @property
    def total(self) -> int:
        """Records in the window at most (its offsets, before skipping by time)."""
        return sum(max(0, self.ends.get(tp, 0) - start) for tp, start in self.starts.items())

    def finished(self) -> bool:
        return self._finished >= set(self._position) | set(self.starts)

    def poll(self, timeout_ms: int, max_records: int) -> list[Message]:
        messages = self.reader.poll(timeout_ms=timeout_ms, max_records=max_records)
        seen: set[Partition] = set()
        kept = []
        for m in messages:
            tp = m.tp
            if tp in self._finished:
                continue
            seen.add(tp)
            self._position[tp] = m.offset + 1
            if m.timestamp_ms is not None and m.timestamp_ms >= self.last_ms:
                self._finish(tp)  # written after the window: the rest is not ours
                continue
            if self.since_ms is not None and m.timestamp_ms is not None and m.timestamp_ms < self.since_ms:
                self.skipped += 1
                continue
            kept.append(m)
        if not messages:  # quiet: every partition read to its end as it stood is finished
            for tp in set(self._position) - self._finished:
                if self._position[tp] >= self.ends.get(tp, 0):
                    self._finish(tp)
        return kept

    def _finish(self, tp: Partition) -> None:
        self._finished.add(tp)
        self.reader.pause([tp])

    # The rest of worker.messages.Consumer, as the reader has it (a finished partition stays paused).
    def pause(self, partitions: Collection[Partition]) -> None:
        self.reader.pause(partitions)

    def resume(self, partitions: Collection[Partition]) -> None:
        self.reader.resume([tp for tp in partitions if tp not in self._finished])

    def assignment(self) -> frozenset[Partition]:
        return self.reader.assignment()

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        self.reader.commit(offsets)

    def highwater(self, partition: Partition) -> int | None:
        return self.reader.highwater(partition)

    def partitions(self, topic: str) -> frozenset[Partition]:
        return self.reader.partitions(topic)

    def end_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        return self.reader.end_offsets(partitions)

    def group_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int | None]:
        return self.reader.group_offsets(partitions)

    def close(self) -> None:
        self.reader.close()
