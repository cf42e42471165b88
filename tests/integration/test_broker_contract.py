"""The broker contract the worker relies on (worker.messages.Consumer and Producer), run against
the in-memory fakes that the unit tests use (worker.testing) and against kafka-python on the real
broker (Tansu). A behaviour the fakes have and the real client lacks, or the reverse, fails here.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable

import pytest

from worker.config import KafkaSettings
from worker.completion import OffsetLedger
from worker.kafka_io import ensure_topics, make_consumer, make_producer
from worker.messages import Consumer, Message, Outbound, Partition, Producer, PublishError
from worker.testing import FakeBroker


@dataclass
class Backend:
    name: str
    create_topic: Callable[[str, int], None]
    consumer: Callable[..., Consumer]  # (topic, group, rebalancing=None)
    producer: Callable[..., Producer]


@pytest.fixture(params=["fake", "kafka"])
def backend(request):
    if request.param == "fake":
        broker = FakeBroker()
        yield Backend("fake", broker.create_topic, lambda topic, group, rebalancing=None: broker.consumer(
                          topic, group, rebalancing), lambda max_request_size=32 << 20: broker.producer(max_request_size))
        return
    bootstrap = request.getfixturevalue("broker").bootstrap
    opened: list = []

    def consumer(topic: str, group: str, rebalancing=None) -> Consumer:
        c = make_consumer(KafkaSettings(bootstrap_servers=bootstrap, topic=topic, group_id=group,
                                        session_timeout_ms=6000, heartbeat_interval_ms=1000),
                          rebalancing or OffsetLedger())
        opened.append(c)
        return c

    def producer(max_request_size: int = 32 << 20) -> Producer:
        p = make_producer(KafkaSettings(bootstrap_servers=bootstrap, max_request_size=max_request_size))
        opened.append(p)
        return p

    def create_topic(topic: str, partitions: int) -> None:
        ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), partitions=partitions, topics=[topic])

    yield Backend("kafka", create_topic, consumer, producer)
    for client in opened:
        client.close()


def poll_until(consumer: Consumer, n: int, timeout_s: float = 30, max_records: int = 500) -> list[Message]:
    """Poll until `n` records arrived (the real group join takes a few seconds)."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += consumer.poll(timeout_ms=200, max_records=max_records)
    return out


def wait_assigned(consumer: Consumer, timeout_s: float = 30) -> frozenset[Partition]:
    deadline = time.monotonic() + timeout_s
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(timeout_ms=200, max_records=1)
    return consumer.assignment()


def publish(backend: Backend, topic: str, n: int, start: int = 0) -> list[Outbound]:
    messages = [Outbound(topic, f"k{i}".encode(), f"value {i}".encode(), (("h", f"{i}".encode()), ("trace", b"t")))
                for i in range(start, start + n)]
    producer = backend.producer()
    producer.publish(messages, timeout_s=30)
    return messages


def topic_name() -> str:
    return f"contract-{uuid.uuid4().hex[:8]}"


def test_every_record_arrives_once_in_order_with_key_value_and_headers(backend):
    topic = topic_name()
    backend.create_topic(topic, 2)
    sent = publish(backend, topic, 20)
    consumer = backend.consumer(topic, f"g-{topic}")
    got = poll_until(consumer, 20)
    assert sorted(m.value for m in got) == sorted(m.value for m in sent)
    by_value = {m.value: m for m in sent}
    for m in got:
        assert m.key == by_value[m.value].key and tuple(m.headers) == by_value[m.value].headers
        assert m.topic == topic and m.tp == Partition(topic, m.partition)
    for p in {m.partition for m in got}:
        offsets = [m.offset for m in got if m.partition == p]
        assert offsets == list(range(len(offsets)))  # in order, from 0, no gap
    assert wait_assigned(consumer) == {Partition(topic, 0), Partition(topic, 1)}  # a lone member owns all
    for p in (0, 1):
        assert consumer.highwater(Partition(topic, p)) == sum(1 for m in got if m.partition == p)


def test_pause_stops_delivery_and_resume_continues(backend):
    topic = topic_name()
    backend.create_topic(topic, 2)
    publish(backend, topic, 4)
    consumer = backend.consumer(topic, f"g-{topic}")
    assert len(poll_until(consumer, 4)) == 4
    consumer.pause(consumer.assignment())
    publish(backend, topic, 6, start=4)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert consumer.poll(timeout_ms=200, max_records=100) == []
    consumer.resume(consumer.assignment())
    assert sorted(m.value for m in poll_until(consumer, 6)) == sorted(f"value {i}".encode() for i in range(4, 10))


def test_a_new_member_resumes_from_the_committed_offsets(backend):
    topic = topic_name()
    backend.create_topic(topic, 2)
    publish(backend, topic, 12)
    group = f"g-{topic}"
    first = backend.consumer(topic, group)
    got = poll_until(first, 12)
    commit = {tp: max(m.offset for m in got if m.tp == tp) // 2 + 1 for tp in {m.tp for m in got}}
    first.commit(commit)
    first.close()
    second = backend.consumer(topic, group)
    again = poll_until(second, sum(sum(1 for m in got if m.tp == tp) - o for tp, o in commit.items()))
    for tp, offset in commit.items():
        assert min(m.offset for m in again if m.tp == tp) == offset
    assert {(m.tp, m.offset) for m in again} == {(m.tp, m.offset) for m in got if m.offset >= commit[m.tp]}


def test_a_record_over_the_size_limit_is_named_and_the_others_are_published(backend):
    topic = topic_name()
    backend.create_topic(topic, 1)
    producer = backend.producer(max_request_size=20_000)
    messages = [Outbound(topic, b"a", b"small"), Outbound(topic, b"b", b"x" * 50_000), Outbound(topic, b"c", b"small too")]
    with pytest.raises(PublishError) as info:
        producer.publish(messages, timeout_s=30)
    assert info.value.failed == {1: "too_large"}
    got = poll_until(backend.consumer(topic, f"g-{topic}"), 2)
    assert sorted(m.value for m in got) == [b"small", b"small too"]


def test_finished_work_is_committed_before_a_partition_moves(backend):
    """A member that finished work but could not commit it yet (a refused commit) commits it in
    its rebalance listener, before the partition goes to the member that joins."""
    topic = topic_name()
    backend.create_topic(topic, 2)
    publish(backend, topic, 20)
    group = f"g-{topic}"
    ledger = OffsetLedger()
    first = backend.consumer(topic, group, ledger)
    got = poll_until(first, 20)
    finished = {tp: max(m.offset for m in got if m.tp == tp) + 1 for tp in {m.tp for m in got}}
    ledger.finished(finished)  # stored and published, never committed
    if backend.name == "fake":
        moved = Partition(topic, 1)
        first.revoke([moved])
        second = backend.consumer(topic, group)
        second.assign([moved])
    else:  # both members poll, each on its own thread as two workers would: the group rebalances
        import threading

        second = backend.consumer(topic, group)
        done = threading.Event()

        def keep_polling() -> None:
            while not done.is_set():
                first.poll(timeout_ms=200, max_records=10)

        thread = threading.Thread(target=keep_polling, daemon=True)
        thread.start()
        deadline = time.monotonic() + 90

        def settled() -> bool:  # both own partitions, between them all of them, none twice
            a, b = first.assignment(), second.assignment()
            return bool(a) and bool(b) and not a & b and a | b == set(finished)

        while not settled() and time.monotonic() < deadline:
            second.poll(timeout_ms=200, max_records=10)
        done.set()
        thread.join(timeout=10)
    moved_partitions = set(finished) - first.assignment()
    assert moved_partitions and moved_partitions <= second.assignment(), "no partition moved"
    committed = second.group_offsets(moved_partitions)
    assert {tp: committed[tp] for tp in moved_partitions} == {tp: finished[tp] for tp in moved_partitions}
    assert not ledger.uncommitted(moved_partitions)  # and the ledger forgot them
    assert all(first.highwater(tp) is None for tp in moved_partitions)  # no high-water mark of others' partitions
