"""Real services for integration tests: a Tansu broker on loopback (one per session: it never
frees message memory), and a fresh Postgres database per session, migrated with Alembic."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker.kafka_io import LocalBroker, free_port

PG_ADMIN_URL = os.environ.get("AEDR_TEST_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with LocalBroker(log_path=log) as b:
        yield b


def _admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The Postgres server's URL without a database name; skips nothing: Postgres must run."""
    from sqlalchemy import text

    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # a missing service is a failure, not a skip
        pytest.fail(f"Postgres is not reachable at {PG_ADMIN_URL}: {exc}")
    finally:
        engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0]


@pytest.fixture
def pg_url(pg_server_url):
    """A fresh, migrated database for one test; dropped afterwards."""
    from sqlalchemy import text

    from worker.storage import upgrade

    name = f"aedr_it_{uuid.uuid4().hex[:10]}"
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{pg_server_url}/{name}"
    upgrade(url)
    yield url
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Corpus:
    """Events with known truth: zoo-generated images, real crops, broken events."""

    values: list[bytes] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # event_id -> pixels
    truth: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # key -> expected dead-letter reason

    def add(self, event_id: str, truth: str, image: np.ndarray) -> None:
        self.values.append(json.dumps({"event_id": event_id, "image_b64": base64.b64encode(png_bytes(image)).decode(),
                                       "metadata": {"truth": truth}}).encode())
        self.keys.append(event_id.encode())
        self.images[event_id] = image
        self.truth[event_id] = truth

    def add_broken(self, key: str, value: bytes, reason: str) -> None:
        self.values.append(value)
        self.keys.append(key.encode())
        self.broken[key] = reason


def make_corpus(models: list[str], per_model: int, real: int, seed: int, with_broken: bool = True) -> Corpus:
    from worker.models import load_autoencoder
    from worker.zoo import HELDOUT_PHOTOS, generate_images, load_photo, random_crops, zoo_model

    photos = [load_photo(n) for n in HELDOUT_PHOTOS]
    corpus = Corpus()
    for k, name in enumerate(models):
        model = load_autoencoder(str(zoo_model(name).path), name=name, device="cpu")
        rng = np.random.default_rng([seed, k])
        for i, image in enumerate(generate_images(model, random_crops(photos, per_model, 64, rng), rng)):
            corpus.add(f"{seed}-{name}-{i}", name, image)
    rng = np.random.default_rng([seed, 99])
    for i, image in enumerate(random_crops(photos, real, 64, rng)):
        corpus.add(f"{seed}-real-{i}", "real", image)
    if with_broken:
        half_png = png_bytes(random_crops(photos, 1, 64, rng)[0])[:300]
        corpus.add_broken(f"{seed}-b-json", b"{nope", "bad_json")
        corpus.add_broken(f"{seed}-b-schema", json.dumps({"event_id": f"{seed}-b-schema"}).encode(), "schema")
        corpus.add_broken(f"{seed}-b-b64", json.dumps({"event_id": f"{seed}-b-b64", "image_b64": "@@@"}).encode(), "decode")
        corpus.add_broken(f"{seed}-b-trunc", json.dumps({"event_id": f"{seed}-b-trunc",
                                                         "image_b64": base64.b64encode(half_png).decode()}).encode(), "decode")
        corpus.add_broken(f"{seed}-b-fetch", json.dumps({"event_id": f"{seed}-b-fetch",
                                                         "image_url": "http://169.254.169.254/x"}).encode(), "fetch")
        bomb = _png_header(60_000, 60_000)
        corpus.add_broken(f"{seed}-b-large", json.dumps({"event_id": f"{seed}-b-large",
                                                         "image_b64": base64.b64encode(bomb).decode()}).encode(), "too_large")
    order = np.random.default_rng([seed, 5]).permutation(len(corpus.values))
    corpus.values = [corpus.values[i] for i in order]
    corpus.keys = [corpus.keys[i] for i in order]
    return corpus


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


@dataclass
class Deployment:
    """Topics, a config file and helpers to run `aedr serve` as a real subprocess."""

    bootstrap: str
    database_url: str
    workdir: Path
    models: list[str]
    topic: str = field(default_factory=lambda: f"uploads-{uuid.uuid4().hex[:8]}")
    max_size: int = 8
    extra_toml: str = ""  # more sections, e.g. "[images]\nmax_bytes = 4194304"
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def alerts(self) -> str:
        return f"{self.topic}.alerts"

    @property
    def dlq(self) -> str:
        return f"{self.topic}.dlq"

    def config(self, metrics_port: int) -> Path:
        from worker.zoo import zoo_model

        lines = [
            "[kafka]", f'bootstrap_servers = "{self.bootstrap}"', f'topic = "{self.topic}"',
            f'group_id = "g-{self.topic}"', f'alerts_topic = "{self.alerts}"', f'dlq_topic = "{self.dlq}"',
            "session_timeout_ms = 6000", "heartbeat_interval_ms = 1000",
            "[database]", 'url = "sqlite:///never-used.sqlite"',  # overridden from the environment
            "[batch]", f"max_size = {self.max_size}", "max_wait_ms = 50",
            "[metrics]", 'host = "127.0.0.1"', f"port = {metrics_port}",
            "[scoring]", 'device = "cpu"',
        ]
        lines.append(self.extra_toml)
        for name in self.models:
            m = zoo_model(name)
            lines += ["[[watchlist]]", f'name = "{name}"', f'model = "{m.path}"', f'calibration = "{m.calibration_path}"']
        path = self.workdir / f"worker-{metrics_port}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> tuple[subprocess.Popen, int]:
        port = free_port()
        env = {**os.environ, "AEDR_DATABASE__URL": self.database_url, "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        log = open(self.workdir / f"serve-{port}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "serve", "--config", str(self.config(port))],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc, port

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    def log_of(self, port: int) -> str:
        path = self.workdir / f"serve-{port}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f.read_text(errors="replace")[-3000:] for f in sorted(self.workdir.glob("serve-*.log")))


def produce(bootstrap: str, topic: str, corpus: Corpus, part: slice = slice(None)) -> None:
    from kafka import KafkaProducer

    from worker.config import KafkaSettings
    from worker.kafka_io import ensure_topics

    ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), topics=[topic, f"{topic}.alerts", f"{topic}.dlq"])
    producer = KafkaProducer(bootstrap_servers=[bootstrap], max_request_size=16 * 1024 * 1024)
    for key, value in zip(corpus.keys[part], corpus.values[part]):
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list:
    """All records of a topic (no group), waiting until at least `expected` arrived."""
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
        if len(records) >= expected and quiet >= 2:  # the expected count, then nothing more for 0.6 s
            break
    consumer.close()
    return records


def wait_for(predicate, timeout_s: float, what: str, interval: float = 0.25, diagnostics=lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{diagnostics()}")


def produce_values(bootstrap: str, topic: str, values: list[bytes], partitions: int = 4) -> list[tuple[int, int]]:
    """Publish raw values; returns (partition, offset) of each, as the broker acknowledged."""
    from kafka import KafkaProducer

    from worker.config import KafkaSettings
    from worker.kafka_io import ensure_topics

    ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), partitions=partitions,
                  topics=[topic, f"{topic}.alerts", f"{topic}.dlq"])
    producer = KafkaProducer(bootstrap_servers=[bootstrap], max_request_size=48 * 1024 * 1024, linger_ms=5)
    futures = [producer.send(topic, value=v, key=str(i).encode()) for i, v in enumerate(values)]
    producer.flush()
    positions = [(f.get(timeout=60).partition, f.get(timeout=60).offset) for f in futures]
    producer.close()
    return positions


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = 4) -> dict[int, int]:
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        result = admin.list_group_offsets({group: [TopicPartition(topic, p) for p in range(partitions)]})[group]
    finally:
        admin.close()
    return {tp.partition: om.offset for tp, om in result.items() if om.offset is not None and om.offset >= 0}


def assert_committed_work_is_stored(store, bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The at-least-once invariant: below each partition's committed offset, every message has
    its events row. Returns the committed offsets."""
    committed = committed_offsets(bootstrap, group, topic)
    stored = {(r["partition"], r["offset"]) for r in store.events() if r["topic"] == topic}
    for partition, offset in committed.items():
        missing = [o for o in range(offset) if (partition, o) not in stored]
        assert not missing, f"partition {partition}: offsets {missing[:10]} committed but not stored"
    return committed


def record(scenario: dict) -> None:
    """Append a scenario's figures to $AEDR_RELIABILITY_REPORT (JSON lines), and print them."""
    print("RELIABILITY", json.dumps(scenario))
    path = os.environ.get("AEDR_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(scenario) + "\n")


def http_status(port: int, path: str) -> int:
    """The status code of GET http://127.0.0.1:port/path (errors included)."""
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code
