"""What flows between the broker and the worker, as plain typed values, and the two narrow
interfaces the worker needs of a broker client.

The worker never sees a Kafka type: `worker.kafka_io` turns kafka-python's records into
`Message`s and implements `Consumer` and `Producer` on top of its clients, and the in-memory
broker in `worker.testing` implements the same two interfaces for fast tests. One contract
suite (tests/integration/test_broker_contract.py) runs against both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, NamedTuple, Protocol, Sequence

from .errors import AedrError

Headers = tuple[tuple[str, bytes], ...]


class Partition(NamedTuple):
    """A topic partition. Equal to (and hashed as) kafka-python's TopicPartition tuple."""

    topic: str
    partition: int


@dataclass(frozen=True)
class Message:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int | None = None

    @property
    def tp(self) -> Partition:
        return Partition(self.topic, self.partition)

    @property
    def source(self) -> str:
        """topic/partition/offset: where this record can be found again."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True)
class Outbound:
    """One record to publish (an alert or a dead letter)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


class Consumer(Protocol):
    """A group consumer with manual commits."""

    def poll(self, timeout_ms: int, max_records: int) -> list[Message]:
        """Up to `max_records` records from unpaused assigned partitions, in order per
        partition; waits up to `timeout_ms` when there are none."""

    def pause(self, partitions: Collection[Partition]) -> None: ...

    def resume(self, partitions: Collection[Partition]) -> None: ...

    def assignment(self) -> frozenset[Partition]: ...

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit the next offset to read per partition; raises if the group refuses."""

    def highwater(self, partition: Partition) -> int | None:
        """The partition's end offset as last seen by the fetcher (None before a fetch). It
        stops moving while the partition is paused."""

    def partitions(self, topic: str) -> frozenset[Partition]:
        """Every partition of `topic` (assigned to this member or not)."""

    def end_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        """The next offset the broker will write, per partition, asked of the broker now."""

    def group_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int | None]:
        """The group's committed offset per partition (None where nothing was committed)."""

    def close(self) -> None: ...


class Rebalancing(Protocol):
    """What the broker edge needs of the worker when partitions move: the offsets of work that is
    finished (stored and published) but not yet committed, which it commits before a partition
    goes to another member, and news of what moved. Called on the client's own thread."""

    def uncommitted(self, partitions: Collection[Partition]) -> dict[Partition, int]: ...

    def committed_elsewhere(self, offsets: Mapping[Partition, int]) -> None:
        """Those offsets were committed (by the rebalance listener)."""

    def partitions_revoked(self, partitions: Collection[Partition]) -> None: ...

    def partitions_assigned(self, partitions: Collection[Partition]) -> None: ...


class UndecodableRecords(AedrError):
    """`Consumer.poll` met records the client cannot decode: a compression codec it lacks, or a
    batch that fails its checksum. Polling again meets the same records again: nothing past
    them is read from that partition until an operator acts (docs/OPERATIONS.md, "Undecodable
    records"). Not the upload's fault and not a passing outage, so `aedr` stops with status 1
    (a fault of its own) and this one line, unless the loop handles it."""

    exit_status = 1

    def __init__(self, partition: Partition | None, offset: int | None, detail: str):
        where = f"{partition.topic}/{partition.partition}" if partition else "a partition the client did not name"
        at = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"cannot decode the records of {where}{at}: {detail}; nothing past them is read from "
                         "that partition (docs/OPERATIONS.md, \"Undecodable records\")")
        self.partition = partition
        self.offset = offset
        self.detail = detail


class PublishError(Exception):
    """Some records were not acknowledged. `failed` maps each one's index to why: "too_large"
    (the client or the broker refuses its size: sending it again cannot help) or "error"
    (anything else: worth another try). The others were acknowledged."""

    def __init__(self, failed: Mapping[int, str], detail: str):
        super().__init__(detail)
        self.failed = dict(failed)


class Producer(Protocol):
    """Publishes records and waits for the broker's acknowledgement."""

    def publish(self, messages: Sequence[Outbound], timeout_s: float) -> None:
        """Send every message and wait until all are acknowledged; raises `PublishError` naming
        the ones that were not (or any exception when the client itself fails)."""

    def close(self, timeout_s: float = 0) -> None: ...
