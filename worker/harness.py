"""The real-service harness that the demo, the integration tests and the benchmarks share: a
throw-away Postgres database, `aedr serve` as a real process with a written config, and helpers
to publish to and read from topics on a real broker.

Nothing here runs in production; it lives in the package so that every caller uses one copy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .kafka_io import ensure_topics, free_port

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def postgres_database(server_url: str, prefix: str = "aedr_tmp", migrate: bool = True) -> Iterator[str]:
    """A fresh database on `server_url` (a URL without a database name), migrated to the latest
    revision unless `migrate` is false; dropped afterwards, connections and all."""
    from sqlalchemy import create_engine, text

    from .storage import upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = f"{server_url}/{name}"
        if migrate:
            upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def worker_toml(*, bootstrap: str, topic: str, metrics_port: int, models: Sequence[tuple[str, ...]],
                max_size: int = 8, sections: dict[str, dict[str, Any]] | None = None) -> str:
    """A worker config: the topic's alert and dead-letter topics are `<topic>.alerts` and
    `<topic>.dlq`, the group is `g-<topic>`; `models` are (name, model dir, calibration[, dtype]);
    `sections` add or override keys, e.g. {"scoring": {"threads": 1}}."""
    base: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "group_id": f"g-{topic}",
                  "alerts_topic": f"{topic}.alerts", "dlq_topic": f"{topic}.dlq",
                  "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
        "database": {"url": "sqlite:///never-used.sqlite"},  # the URL comes from the environment
        "batch": {"max_size": max_size, "max_wait_ms": 50},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "scoring": {"device": "cpu"},
    }
    for section, values in (sections or {}).items():
        base.setdefault(section, {}).update(values)
    lines: list[str] = []
    for section, values in base.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    for name, model, calibration, *dtype in models:
        lines += ["[[watchlist]]", f"name = {_toml_value(name)}", f"model = {_toml_value(model)}",
                  f"calibration = {_toml_value(calibration)}"] + [f"dtype = {_toml_value(d)}" for d in dtype]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def zoo_models(models: Sequence[str | tuple[str, ...]]) -> list[tuple[str, ...]]:
    """(name, model dir, calibration) for `worker_toml`: a zoo member's name stands for its own."""
    from .zoo import zoo_model

    return [m if isinstance(m, tuple) else (m, str(zoo_model(m).path), str(zoo_model(m).calibration_path))
            for m in models]


@dataclass
class ServeProcess:
    """`aedr serve` as a real process (python -m worker.cli), logging to a file."""

    proc: subprocess.Popen
    metrics_port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM, then wait; a process that does not stop in time is killed (and fails)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


@dataclass
class ServeLauncher:
    """Starts `aedr serve` processes on one topic with one config (tests and benchmarks)."""

    bootstrap: str
    database_url: str
    workdir: Path
    models: Sequence[str | tuple[str, ...]]  # zoo names, or (name, model dir, calibration[, dtype])
    topic: str = field(default_factory=lambda: f"uploads-{uuid.uuid4().hex[:8]}")
    max_size: int = 8
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    processes: list[ServeProcess] = field(default_factory=list)

    @property
    def alerts(self) -> str:
        return f"{self.topic}.alerts"

    @property
    def dlq(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def group(self) -> str:
        return f"g-{self.topic}"

    def config(self, metrics_port: int) -> Path:
        path = self.workdir / f"worker-{metrics_port}.toml"
        path.write_text(worker_toml(bootstrap=self.bootstrap, topic=self.topic, metrics_port=metrics_port,
                                    models=zoo_models(self.models), max_size=self.max_size, sections=self.sections))
        return path

    def start(self) -> ServeProcess:
        port = free_port()
        env = {**os.environ, "AEDR_DATABASE__URL": self.database_url, "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1", **self.env}
        log_path = self.workdir / f"serve-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "serve", "--config", str(self.config(port)),
                 "--log-level", self.log_level],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        process = ServeProcess(proc, port, log_path)
        self.processes.append(process)
        return process

    def stop_all(self, timeout_s: float = 30) -> list[int]:
        for p in self.processes:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        return [p.terminate(timeout_s) for p in self.processes]

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(p.log()[-tail:] for p in self.processes)


def produce_values(bootstrap: str, topic: str, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None,
                   partitions: int = 4, rate: float | None = None) -> list[tuple[int, int]]:
    """Publish raw values (creating the topic and its `.alerts`/`.dlq` if needed), at `rate`
    per second if given; returns (partition, offset) of each, as the broker acknowledged."""
    from kafka import KafkaProducer

    from .config import KafkaSettings

    ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), partitions=partitions,
                  topics=[topic, f"{topic}.alerts", f"{topic}.dlq"])
    producer = KafkaProducer(bootstrap_servers=[bootstrap], max_request_size=48 * 1024 * 1024, linger_ms=5)
    keys = list(keys) if keys is not None else [str(i).encode() for i in range(len(values))]
    started = time.monotonic()
    futures = []
    for i, (key, value) in enumerate(zip(keys, values)):
        if rate:
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        futures.append(producer.send(topic, value=value, key=key))
        if rate:
            producer.flush()
    producer.flush()
    positions = [(m.partition, m.offset) for m in (f.get(timeout=60) for f in futures)]
    producer.close()
    return positions


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list:
    """All records of a topic (no group), waiting until at least `expected` arrived and then
    nothing more for a moment."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False, consumer_timeout_ms=1000)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    records: list = []
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while time.monotonic() < deadline:
        batches = consumer.poll(timeout_ms=300)
        for batch in batches.values():
            records.extend(batch)
        quiet = 0 if batches else quiet + 1
        if len(records) >= expected and quiet >= 2:
            break
    consumer.close()
    return records


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = 4) -> dict[int, int]:
    """The group's committed offset per partition (partitions without a commit are left out)."""
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        result = admin.list_group_offsets({group: [TopicPartition(topic, p) for p in range(partitions)]})[group]
    finally:
        admin.close()
    return {tp.partition: om.offset for tp, om in result.items() if om.offset is not None and om.offset >= 0}


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval: float = 0.25,
             diagnostics: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{diagnostics()}")
