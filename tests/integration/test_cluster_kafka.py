"""Day one on a real cluster, against the real broker (Tansu) on loopback:

- every codec a producer may use (gzip, snappy, lz4, zstd), written by another client (Debian's
  kcat, through tests/kafka_shim.py) and scored by `aedr serve`;
- records the client cannot decode: one line naming topic, partition and offset; never skipped;
- TLS (stunnel4 in front of the broker, a CA made here), with and without client certificates;
- SASL PLAIN and SCRAM-SHA-256/512 (tests/kafka_shim.py as the authenticating gateway), and a
  wrong password: one `aedr: error:` line and exit 3 within kafka.connect_timeout_ms;
- every partition assignment strategy, and static membership (group.instance.id).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.integration.conftest import ServeLauncher, make_corpus, wait_for
from tests.kafka_shim import KafkaShim
from tests.tls import KEY_PASSWORD, Stunnel, make_pki
from worker.config import KafkaSettings
from worker.errors import ServiceUnavailable
from worker.harness import REPO, postgres_database
from worker.completion import OffsetLedger
from worker.kafka_io import LocalBroker, ensure_topics, free_port, make_consumer, make_producer
from worker.messages import Outbound, Partition, UndecodableRecords
from worker.storage import SqlStore

CODECS = ("gzip", "snappy", "lz4", "zstd")
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def shimmed():
    """A broker that advertises the kcat shim's port, so every client goes through it."""
    port = free_port()
    with LocalBroker(advertised_port=port) as broker:
        shim = KafkaShim(("127.0.0.1", broker.port), port).start()
        yield shim
        shim.stop()


def kcat(bootstrap: str, topic: str, codec: str, values: list[bytes], partition: int | None = None) -> str:
    """Produce with librdkafka's kcat, compressed with `codec`, one value per line; its stderr."""
    if not shutil.which("kcat"):
        pytest.fail("kcat not found: `make tools` installs Debian's kcat")
    assert all(b"\n" not in v for v in values)
    args = ["kcat", "-b", bootstrap, "-P", "-t", topic, "-z", codec, "-X", "message.max.bytes=10000000"]
    if partition is not None:
        args += ["-p", str(partition)]
    result = subprocess.run(args, input=b"\n".join(values) + b"\n", capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return result.stderr.decode(errors="replace")


def poll_until(consumer, n: int, timeout_s: float = 30) -> list:
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += consumer.poll(timeout_ms=200, max_records=500)
    return out


# ---------------------------------------------------------------- codecs


def test_kcat_batches_in_every_codec_are_scored_by_serve(shimmed, pg_server_url, tmp_path):
    bootstrap = f"127.0.0.1:{shimmed.port}"
    corpus = make_corpus(["kl-f4c4"], per_model=2, real=1, seed=31, with_broken=False)
    with postgres_database(pg_server_url, "aedr_codec") as url:
        launcher = ServeLauncher(bootstrap, url, tmp_path, ["kl-f4c4"])
        ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), 4,
                      [launcher.topic, launcher.alerts, launcher.dlq])
        before = dict(shimmed.codecs)
        ids = []
        for codec in CODECS:  # the same events again under each codec, with their own ids
            values = [e.value.replace(e.event_id.encode(), f"{e.event_id}-{codec}".encode()) for e in corpus.events]
            ids += [f"{e.event_id}-{codec}" for e in corpus.events]
            # kcat exits 0 even when a fresh topic's metadata is not served yet and nothing was
            # delivered: produce again until a batch in this codec went through (the store is
            # idempotent on event ids, so a repeat changes nothing downstream).
            deadline = time.monotonic() + 60
            while True:
                stderr = kcat(bootstrap, launcher.topic, codec, values)
                if shimmed.codecs[codec] > before.get(codec, 0) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            # the broker really received batches in this codec
            assert shimmed.codecs[codec] > before.get(codec, 0), (dict(shimmed.codecs), stderr)
        serve = launcher.start()
        store = SqlStore.from_url(url)
        try:
            wait_for(lambda: store.count_events() == len(ids), 120, "every kcat event stored",
                     diagnostics=launcher.logs)
            rows = {r["event_id"]: r["status"] for r in store.events()}
            assert rows == {i: "scored" for i in ids}
        finally:
            store.close()
            assert serve.terminate(30) == 0, launcher.logs()


def _poll_in_thread(consumer, timeout_s: float = 15):
    """consumer.poll in a thread, so that a client that spins forever fails the test instead of
    hanging it; returns what poll returned or raised."""
    box: list = []

    def run():
        try:
            box.append(consumer.poll(timeout_ms=500, max_records=100))
        except Exception as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert box, "poll() hung"
    return box[0]


def test_records_the_client_cannot_decode_are_named_and_never_skipped(shimmed, monkeypatch):
    import kafka.codec

    bootstrap = f"127.0.0.1:{shimmed.port}"
    topic = unique("undecodable")
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic=topic, group_id=f"g-{topic}", **FAST_GROUP)
    ensure_topics(settings, 1, [topic])
    kcat(bootstrap, topic, "gzip", [b"a" * 2000, b"b" * 2000], partition=0)
    kcat(bootstrap, topic, "snappy", [b"c" * 2000, b"d" * 2000], partition=0)
    monkeypatch.setattr(kafka.codec, "snappy", None)  # as a client built without the codec
    consumer = make_consumer(settings, OffsetLedger())
    try:
        got = poll_until(consumer, 2)
        assert [(m.offset, m.value[:1]) for m in got] == [(0, b"a"), (1, b"b")]
        for _ in range(3):  # the same records again each time: nothing is skipped, nothing hangs
            outcome = _poll_in_thread(consumer)
            assert isinstance(outcome, UndecodableRecords), outcome
            assert (outcome.partition, outcome.offset) == (Partition(topic, 0), 2)
            assert f"{topic}/0 at offset 2" in str(outcome) and "snappy" in str(outcome)
    finally:
        consumer.close()


def test_serve_stops_with_one_line_on_undecodable_records(shimmed, pg_server_url, tmp_path):
    """A worker image without a codec (simulated: `import snappy` fails) meets snappy batches:
    what came before them is finished, the partition is paused, and once that has lasted
    guard.fault_exit_s the worker exits 1 with one line that names the partition and codec."""
    bootstrap = f"127.0.0.1:{shimmed.port}"
    blocker = tmp_path / "no-snappy"
    (blocker / "snappy").mkdir(parents=True)
    (blocker / "snappy" / "__init__.py").write_text("raise ImportError('snappy blocked for this test')\n")
    with postgres_database(pg_server_url, "aedr_nocodec") as url:
        launcher = ServeLauncher(bootstrap, url, tmp_path, ["kl-f4c4"], sections={"guard": {"fault_exit_s": 10}},
                                 env={"PYTHONPATH": f"{blocker}{os.pathsep}{REPO}"})
        ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), 1, [launcher.topic, launcher.alerts, launcher.dlq])
        corpus = make_corpus(["kl-f4c4"], per_model=1, real=1, seed=32, with_broken=False)
        kcat(bootstrap, launcher.topic, "gzip", corpus.values, partition=0)
        kcat(bootstrap, launcher.topic, "snappy", [b"x" * 4000] * 3, partition=0)
        serve = launcher.start()
        assert serve.proc.wait(timeout=120) == 1, serve.log()
        errors = [line for line in serve.log().splitlines() if line.startswith("aedr: error:")]
        assert len(errors) == 1, serve.log()
        assert f"{launcher.topic}/0 at offset {len(corpus.values)}" in errors[0] and "snappy" in errors[0]
        assert "Traceback" not in serve.log()
        store = SqlStore.from_url(url)  # what came before the undecodable batch was finished
        try:
            assert {r["event_id"] for r in store.events()} == {e.event_id for e in corpus.events}
        finally:
            store.close()


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=["tls", "mtls"])
def tls_broker(request, pki, tmp_path_factory):
    """(bootstrap, whether client certificates are required): stunnel in front of a broker
    that advertises stunnel's port."""
    port = free_port()
    with LocalBroker(advertised_port=port) as broker:
        tunnel = Stunnel(pki, port, broker.port, tmp_path_factory.mktemp("stunnel"),
                         require_client_cert=request.param == "mtls")
        yield f"127.0.0.1:{port}", request.param == "mtls"
        tunnel.stop()


def tls_settings(bootstrap: str, pki, topic: str, client_cert: bool, **extra) -> KafkaSettings:
    keys = dict(ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key), ssl_password=KEY_PASSWORD)
    options = {"bootstrap_servers": bootstrap, "topic": topic, "group_id": f"g-{topic}", "security_protocol": "SSL",
               "ssl_cafile": str(pki.ca), "connect_timeout_ms": 3000, **FAST_GROUP}
    return KafkaSettings(**{**options, **(keys if client_cert else {}), **extra})


def roundtrip(settings: KafkaSettings, n: int = 3) -> list[bytes]:
    ensure_topics(settings, 2, [settings.topic])
    producer = make_producer(settings)
    producer.publish([Outbound(settings.topic, b"k", f"v{i}".encode()) for i in range(n)], timeout_s=20)
    producer.close()
    consumer = make_consumer(settings, OffsetLedger())
    try:
        return sorted(m.value for m in poll_until(consumer, n))
    finally:
        consumer.close()


def test_consumer_and_producer_through_tls(tls_broker, pki):
    bootstrap, mtls = tls_broker
    topic = unique("tls")
    assert roundtrip(tls_settings(bootstrap, pki, topic, client_cert=True)) == [b"v0", b"v1", b"v2"]
    if not mtls:  # server authentication only: no client certificate needed
        assert roundtrip(tls_settings(bootstrap, pki, unique("tls"), client_cert=False)) == [b"v0", b"v1", b"v2"]


@pytest.mark.parametrize("problem", ["untrusted CA", "no client certificate"])
def test_a_refused_tls_handshake_is_one_clear_error_within_the_timeout(tls_broker, pki, problem):
    bootstrap, mtls = tls_broker
    if problem == "no client certificate" and not mtls:
        pytest.skip("the terminator does not ask for client certificates")
    settings = tls_settings(bootstrap, pki, unique("tls"), client_cert=problem != "no client certificate",
                            connect_timeout_ms=2000)
    if problem == "untrusted CA":
        settings = dataclasses.replace(settings, ssl_cafile=str(pki.other_ca))
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as info:
        make_producer(settings)
    assert time.monotonic() - started < 6
    message = str(info.value)
    assert "\n" not in message and "within kafka.connect_timeout_ms=2000" in message
    if problem == "untrusted CA":
        assert "CERTIFICATE_VERIFY_FAILED" in message
    else:  # TLS 1.3: the alert, or (when the server closes first) the EOF and a hint
        assert "CERTIFICATE_REQUIRED" in message or "does it require a client certificate? kafka.ssl_certfile" in message


def test_serve_through_mutual_tls_with_secrets_from_files(pki, pg_server_url, tmp_path):
    port = free_port()
    with LocalBroker(advertised_port=port) as broker, postgres_database(pg_server_url, "aedr_tls") as url:
        tunnel = Stunnel(pki, port, broker.port, tmp_path, require_client_cert=True)
        try:
            bootstrap = f"127.0.0.1:{port}"
            (tmp_path / "key-password").write_text(KEY_PASSWORD + "\n")
            kafka = {"security_protocol": "SSL", "ssl_certfile": str(pki.client_cert),
                     "ssl_keyfile": str(pki.client_key), "ssl_password_file": str(tmp_path / "key-password")}
            launcher = ServeLauncher(bootstrap, url, tmp_path, ["kl-f4c4"], sections={"kafka": kafka},
                                     env={"AEDR_KAFKA__SSL_CAFILE": str(pki.ca)})
            corpus = make_corpus(["kl-f4c4"], per_model=2, real=2, seed=33)
            settings = tls_settings(bootstrap, pki, launcher.topic, client_cert=True)
            ensure_topics(settings, 2, [launcher.topic, launcher.alerts, launcher.dlq])
            producer = make_producer(settings)
            producer.publish([Outbound(launcher.topic, k, v) for k, v in zip(corpus.keys, corpus.values)], 30)
            producer.close()
            serve = launcher.start()
            store = SqlStore.from_url(url)
            try:
                wait_for(lambda: store.count_events() == len(corpus.values), 120, "events stored through TLS",
                         diagnostics=launcher.logs)
                statuses = {r["event_id"]: r["status"] for r in store.events()}
                assert sum(s == "scored" for s in statuses.values()) == len(corpus.images)
                assert sum(s == "failed" for s in statuses.values()) == len(corpus.broken)
            finally:
                store.close()
                assert serve.terminate(30) == 0, launcher.logs()
            assert KEY_PASSWORD not in serve.log()
        finally:
            tunnel.stop()


# ---------------------------------------------------------------- SASL

USERS = {"aedr": "correct-horse-battery"}


@pytest.fixture(scope="module")
def sasl_gateway():
    port = free_port()
    with LocalBroker(advertised_port=port) as broker:
        gateway = KafkaShim(("127.0.0.1", broker.port), port, users=USERS).start()
        yield gateway
        gateway.stop()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_mechanisms(sasl_gateway, mechanism, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text(USERS["aedr"])
    topic = unique("sasl")
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{sasl_gateway.port}", topic=topic, group_id=f"g-{topic}",
                             security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism, sasl_username="aedr",
                             sasl_password_file=str(password_file), connect_timeout_ms=3000, **FAST_GROUP)
    assert roundtrip(settings) == [b"v0", b"v1", b"v2"]


def test_serve_with_a_wrong_password_is_one_line_and_exit_3(sasl_gateway, tmp_path):
    config = tmp_path / "w.toml"
    zoo = REPO / "worker" / "zoo"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "127.0.0.1:{sasl_gateway.port}"\nsecurity_protocol = "SASL_PLAINTEXT"\n'
        f'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "aedr"\nconnect_timeout_ms = 3000\n'
        f'[database]\nurl = "sqlite:///{tmp_path}/a.db"\n[metrics]\nhost = "127.0.0.1"\nport = 0\n'
        f'[scoring]\ndevice = "cpu"\n[[watchlist]]\nname = "kl"\nmodel = "{zoo / "models" / "kl-f4c4"}"\n'
        f'calibration = "{zoo / "calibrations" / "kl-f4c4.json"}"\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AEDR_KAFKA__SASL_PASSWORD": "wrong-password-123"}
    subprocess.run([sys.executable, "-m", "worker.cli", "db", "upgrade", "--config", str(config)], cwd=REPO,
                   env=env, check=True, capture_output=True, timeout=120)
    refused = sasl_gateway.refused
    out = subprocess.run([sys.executable, "-m", "worker.cli", "serve", "--config", str(config)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in out.stderr.splitlines() if line.startswith("aedr: error:")]
    assert out.returncode == 3, out.stderr
    assert len(errors) == 1 and "SaslAuthenticationFailedError" in errors[0], out.stderr
    assert "Traceback" not in out.stderr and "wrong-password-123" not in out.stderr + out.stdout
    assert not re.search(r"(ERROR|WARNING) kafka\.", out.stderr), out.stderr  # the client's retries are kept back
    assert sasl_gateway.refused > refused


# ---------------------------------------------------------------- groups


@pytest.mark.parametrize("strategy", ["range", "roundrobin", "sticky", "cooperative-sticky"])
def test_every_assignment_strategy_against_the_broker(broker, strategy):
    """A group member with each strategy joins, is assigned every partition and consumes them.
    (Tansu 0.6 does not reliably rebalance a second member into a live group, whatever the
    strategy, nor join groups concurrently: docs/OPERATIONS.md, "Consumer groups".)"""
    topic = unique("assign")
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, group_id=f"g-{topic}",
                             partition_assignment_strategy=(strategy,), **FAST_GROUP)
    ensure_topics(settings, 4, [topic])
    producer = make_producer(settings)
    producer.publish([Outbound(topic, f"k{i}".encode(), f"v{i}".encode()) for i in range(8)], 20)
    producer.close()
    consumer = make_consumer(settings, OffsetLedger())
    try:
        got = poll_until(consumer, 8)
        assert sorted(m.value for m in got) == sorted(f"v{i}".encode() for i in range(8))
        assert consumer.assignment() == {Partition(topic, p) for p in range(4)}
    finally:
        consumer.close()


def test_static_membership(broker):
    """group.instance.id (KIP-345): a member with a static id joins, consumes and commits, and a
    restarted member with the same id resumes from the commit."""
    topic = unique("static")
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, group_id=f"g-{topic}",
                             group_instance_id="aedr-0", **FAST_GROUP)
    ensure_topics(settings, 1, [topic])
    producer = make_producer(settings)
    producer.publish([Outbound(topic, None, f"v{i}".encode()) for i in range(4)], 20)
    producer.close()
    first = make_consumer(settings, OffsetLedger())
    assert [m.value for m in poll_until(first, 4)] == [b"v0", b"v1", b"v2", b"v3"]
    first.commit({Partition(topic, 0): 2})
    first.close()
    second = make_consumer(settings, OffsetLedger())
    try:
        assert [m.value for m in poll_until(second, 2)] == [b"v2", b"v3"]
    finally:
        second.close()
