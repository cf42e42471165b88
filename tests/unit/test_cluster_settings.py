"""Settings for a real cluster, without services: Kafka connection keys and pass-through client
options, secrets (never in the TOML, masked everywhere), database pool keys, JSON logs, forwarded
headers, and the small CLI additions (--version, durations, db prune on SQLite)."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime, timedelta, timezone

import pytest

from worker.completion import OffsetLedger
from worker.config import ConfigError, DatabaseSettings, KafkaSettings, load_settings, mask_url, scrub


def load(tmp_path, toml: str = "", env: dict | None = None):
    path = tmp_path / "w.toml"
    path.write_text(toml)
    return load_settings(path, env or {})


def test_tls_and_sasl_keys_from_toml_and_environment(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    settings = load(tmp_path, '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\n'
                              'sasl_username = "aedr"\nssl_check_hostname = true\n',
                    {"AEDR_KAFKA__SSL_CAFILE": str(ca), "AEDR_KAFKA__SASL_PASSWORD": "pw-from-env",
                     "AEDR_KAFKA__CONNECT_TIMEOUT_MS": "5000",
                     "AEDR_KAFKA__PARTITION_ASSIGNMENT_STRATEGY": "cooperative-sticky,range",
                     "AEDR_KAFKA__FORWARD_HEADERS": "traceparent, x-request-id"})
    kafka = settings.kafka
    assert (kafka.ssl_cafile, kafka.sasl_password, kafka.connect_timeout_ms) == (str(ca), "pw-from-env", 5000)
    assert kafka.partition_assignment_strategy == ("cooperative-sticky", "range")
    assert kafka.forward_headers == ("traceparent", "x-request-id")
    assert "pw-from-env" not in repr(settings)


@pytest.mark.parametrize("toml, says", [
    ('[kafka]\nsasl_password = "x"\n', "kafka.sasl_password must not be in the config file"),
    ('[kafka]\nssl_password = "x"\n', "kafka.ssl_password must not be in the config file"),
    ('[kafka]\nsasl_oauth_token = "x"\n', "kafka.sasl_oauth_token must not be in the config file"),
    ('[kafka.producer_options]\nsasl_plain_password = "x"\n', "kafka.producer_options.sasl_plain_password"),
    ('[database]\nurl = "postgresql+psycopg2://u@h/db?password=hunter2"\n', "contains a password"),
    ('[database]\nurl = "postgresql+psycopg2://u:hunter2@h/db"\n', "contains a password"),
])
def test_secrets_are_refused_in_the_file(tmp_path, toml, says):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml)
    assert says in str(info.value) and "hunter2" not in str(info.value)


@pytest.mark.parametrize("toml, says", [
    ('[kafka]\nsecurity_protocol = "TLS"\n', "kafka.security_protocol must be one of"),
    ('[kafka]\nsecurity_protocol = "SASL_SSL"\n', "kafka.sasl_mechanism must be one of"),
    ('[kafka]\nsasl_mechanism = "PLAIN"\n', "use SASL_SSL"),
    ('[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\n', "needs kafka.sasl_username"),
    ('[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "OAUTHBEARER"\n', "sasl_oauth_token_file"),
    ('[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "/nonexistent/ca.pem"\n', "no such file"),
    ('[kafka]\nssl_cafile = "/etc/hostname"\n', "use SSL or SASL_SSL"),
    ('[kafka]\npartition_assignment_strategy = ["sticky", "fair"]\n', "partition_assignment_strategy"),
    ('[kafka]\nconnect_timeout_ms = 0\n', "kafka.connect_timeout_ms must be ≥ 1"),
    ('[kafka.consumer_options]\nfetch_min_byte = 1\n', "no option 'fetch_min_byte' (did you mean fetch_min_bytes?)"),
    ('[kafka.producer_options]\ncompresion_type = "zstd"\n', "did you mean compression_type?"),
    ('[kafka.consumer_options]\nenable_auto_commit = true\n', "set by the worker"),
    ('[kafka.producer_options]\nacks = 1\n', "set by the worker"),
    ('[kafka.consumer_options]\nsession_timeout_ms = 1\n', "use kafka.session_timeout_ms"),
    ('[kafka.consumer_options]\nfetch_min_bytes = "one"\n', "expected int"),
    ('[kafka.admin_options]\nselector = "epoll"\n', "Python object"),
    ('[kafka]\nconsumer_options = 3\n', "expected a table"),
    ('[database]\npool_size = 0\n', "database.pool_size must be ≥ 1"),
    ('[logging]\nformat = "xml"\n', "logging.format"),
])
def test_bad_kafka_and_database_settings_say_which_key(tmp_path, toml, says):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml)
    assert says in str(info.value)


def test_pass_through_options_reach_the_clients(tmp_path, monkeypatch):
    settings = load(tmp_path, '[kafka.consumer_options]\nfetch_min_bytes = 1024\nisolation_level = "read_committed"\n'
                              '[kafka.producer_options]\ncompression_type = "zstd"\nlinger_ms = 20\n',
                    {"AEDR_KAFKA__ADMIN_OPTIONS": '{"request_timeout_ms": 5000}'})
    assert settings.kafka.admin_options == {"request_timeout_ms": 5000}
    seen: dict[str, dict] = {}
    import kafka

    from worker import kafka_io

    class Fake:
        def __init__(self, role, **options):
            seen[role] = options

        def subscribe(self, *args, **kwargs):
            pass

    monkeypatch.setattr(kafka, "KafkaConsumer", lambda **o: Fake("consumer", **o))
    monkeypatch.setattr(kafka, "KafkaProducer", lambda **o: Fake("producer", **o))
    kafka_io.make_consumer(settings.kafka, OffsetLedger())
    kafka_io.make_producer(settings.kafka)
    assert seen["consumer"]["fetch_min_bytes"] == 1024 and seen["consumer"]["isolation_level"] == "read_committed"
    assert seen["consumer"]["enable_auto_commit"] is False
    assert [a.name for a in seen["consumer"]["partition_assignment_strategy"]] == ["range", "roundrobin"]
    assert seen["producer"]["compression_type"] == "zstd" and seen["producer"]["acks"] == "all"
    assert seen["producer"]["bootstrap_timeout_ms"] == settings.kafka.connect_timeout_ms


def test_secrets_from_files_and_a_rotating_oauth_token(tmp_path):
    from worker.kafka_io import _connection

    (tmp_path / "pw").write_text("from-a-file\n")
    (tmp_path / "token").write_text("token-1")
    sasl = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="u",
                         sasl_password_file=str(tmp_path / "pw"))
    assert _connection(sasl)["sasl_plain_password"] == "from-a-file"
    oauth = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                          sasl_oauth_token_file=str(tmp_path / "token"))
    provider = _connection(oauth)["sasl_oauth_token_provider"]
    from kafka.net.sasl.oauth import AbstractTokenProvider

    assert isinstance(provider, AbstractTokenProvider) and provider.token() == "token-1"
    (tmp_path / "token").write_text("token-2")
    assert provider.token() == "token-2"
    missing = KafkaSettings(sasl_password_file=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="kafka.sasl_password_file"):
        missing.secret("sasl_password")


@pytest.mark.parametrize("url", [
    "postgresql+psycopg2://aedr:hunter2@db:5432/aedr",
    "postgresql+psycopg2://aedr@db:5432/aedr?password=hunter2",
    "postgresql+psycopg2://aedr@db:5432/aedr?sslmode=require&PASSWORD=hunter2",
    "postgresql+psycopg2://aedr@db/aedr?sslpassword=hunter2&sslmode=verify-full",
    "postgresql+psycopg2://aedr:hunter%32@db/aedr",
])
def test_every_form_of_database_password_is_masked(url):
    masked = mask_url(url)
    assert "hunter" not in masked and "***" in masked
    assert "hunter" not in scrub(f"could not parse {url} (or {url.replace('%32', '2')})", url)


def test_an_unparseable_url_is_not_shown():
    assert mask_url("postgres ql://u:hunter2@") == "<unparseable database url>"
    assert "hunter2" not in scrub("bad url postgres ql://u:hunter2@h", "postgres ql://u:hunter2@h")


def test_database_pool_settings_reach_the_engine(tmp_path):
    from worker.storage import make_engine

    settings = load(tmp_path, "[database]\npool_size = 5\nmax_overflow = 1\npool_timeout_s = 3\n"
                              "pool_recycle_s = 600\nconnect_timeout_s = 4\n").database
    engine = make_engine("postgresql+psycopg2://u@127.0.0.1:1/x", settings)
    assert (engine.pool.size(), engine.pool._max_overflow, engine.pool._timeout, engine.pool._recycle) == (5, 1, 3, 600)
    assert DatabaseSettings().pool_size == 2
    engine.dispose()


def test_json_logs_carry_extra_fields():
    from worker.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("aedr-test-json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("stored %d", 3, extra={"event_id": "e-1", "topic": "uploads", "partition": 2, "offset": 17})
    line = json.loads(stream.getvalue())
    assert line["message"] == "stored 3" and line["level"] == "WARNING" and line["logger"] == "aedr-test-json"
    assert (line["event_id"], line["topic"], line["partition"], line["offset"]) == ("e-1", "uploads", 2, 17)
    assert line["time"].endswith("Z")


def test_forwarded_headers_go_onto_alerts_and_dead_letters_keep_all():
    from worker.outcomes import Publishing

    publishing = Publishing("alerts", "dlq", forward_headers=("traceparent", "X-Request-Id"))
    headers = (("traceparent", b"00-abc-01"), ("x-request-id", b"r-1"), ("secret", b"no"))
    assert publishing.forwarded(headers) == (("traceparent", b"00-abc-01"), ("x-request-id", b"r-1"))
    assert Publishing("alerts", "dlq").forwarded(headers) == ()


def test_version_and_durations(capsys):
    from worker.cli import duration, main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    from importlib.metadata import version

    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"aedr {version('aedr')}"
    assert duration("90d") == timedelta(days=90) and duration("12h") == timedelta(hours=12)
    assert duration("2w") == timedelta(weeks=2)
    for bad in ("90", "d", "-3d", "0s", "1.5x"):
        with pytest.raises(Exception):
            duration(bad)


def test_db_prune_on_sqlite(tmp_path, capsys):
    from worker.cli import main
    from worker.storage import AttributionRecord, EventOutcome, SqlStore

    url = f"sqlite:///{tmp_path / 'a.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    store = SqlStore.from_url(url)
    now = datetime.now(timezone.utc)
    attribution = AttributionRecord("m", 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, False)
    store.save([EventOutcome(f"e{i}", "t", 0, i, "scored", now - timedelta(days=i * 10), now, attributions=(attribution,))
                for i in range(10)])
    capsys.readouterr()
    assert main(["db", "prune", "--older-than", "45d", "--database-url", url, "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["events"], dry["attributions"], dry["dry_run"]) == (5, 5, True) and store.count_events() == 10
    assert main(["db", "prune", "--older-than", "45d", "--database-url", url, "--batch-size", "2"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert (done["events"], done["attributions"], done["batches"]) == (5, 5, 3)
    assert sorted(r["event_id"] for r in store.events()) == [f"e{i}" for i in range(5)]
    assert len(store.attributions()) == 5
    store.close()
