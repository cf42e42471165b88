"""Settings (TOML + environment) and event validation."""

from __future__ import annotations

import base64
import json

import pytest

from worker.config import BatchSettings, ConfigError, ScoringSettings, load_settings, mask_url
from worker.cores import cgroup_quota, quota_cores
from worker.decision import Match, best_match
from worker.events import InvalidEvent, alert_message, decode_b64_image, decode_event, event_id_hint, UploadEvent

TOML = """
[kafka]
bootstrap_servers = "broker:9092"
topic = "uploads"
group_id = "aedr"
alerts_topic = "aedr.alerts"
dlq_topic = "uploads.dlq"
[database]
url = "postgresql+psycopg2://user@127.0.0.1:5432/db"
[batch]
max_size = 16
max_wait_ms = 50
[metrics]
port = 9108
[[watchlist]]
name = "sd15"
model = "path/or/hub-id"
calibration = "calibrations/sd15.json"
[[watchlist]]
name = "flux"
model = "black-forest-labs/FLUX.1-dev"
subfolder = "vae"
dtype = "bf16"
calibration = "calibrations/flux.json"
"""


def test_toml_then_environment_overrides(tmp_path):
    path = tmp_path / "worker.toml"
    path.write_text(TOML)
    env = {
        "AEDR_DATABASE__URL": "postgresql+psycopg2://aedr:s3cret@db:5432/aedr",
        "AEDR_BATCH__MAX_SIZE": "32",
        "AEDR_FETCH__ALLOWED_SCHEMES": "https,file",
        "AEDR_FETCH__ALLOW_PRIVATE_ADDRESSES": "true",
        "UNRELATED": "x",
    }
    s = load_settings(path, env)
    assert s.kafka.bootstrap_servers == "broker:9092"
    assert s.database.url.endswith("@db:5432/aedr")
    assert s.batch.max_size == 32 and s.batch.max_wait_ms == 50
    assert s.fetch.allowed_schemes == ("https", "file") and s.fetch.allow_private_addresses is True
    assert [w.name for w in s.watchlist] == ["sd15", "flux"]
    assert s.watchlist[1].subfolder == "vae" and s.watchlist[1].dtype == "bf16"
    assert "s3cret" not in mask_url(s.database.url)


def test_automatic_batch_settings_depend_on_the_device():
    auto = BatchSettings()
    assert (auto.resolved(on_gpu=False).inflight, auto.resolved(on_gpu=False).prepare_threads) == (1, 0)
    assert (auto.resolved(on_gpu=True).inflight, auto.resolved(on_gpu=True).prepare_threads) == (2, 4)
    explicit = load_settings(None, {"AEDR_BATCH__INFLIGHT": "2", "AEDR_BATCH__PREPARE_THREADS": "3"}).batch
    assert (explicit.resolved(on_gpu=False).inflight, explicit.resolved(on_gpu=False).prepare_threads) == (2, 3)


@pytest.mark.parametrize("env, cores, devices, threads", [
    ({}, 1, ("auto",), 1),  # one scorer per core, one torch thread each
    ({}, 2, ("auto",) * 2, 1),
    ({}, 6, ("auto",) * 6, 1),
    ({}, 8, ("auto",) * 8, 1),
    ({}, 9, ("auto",) * 4, 2),  # past 8 cores: ceil(cores / 8) threads each, as many scorers as fill the cores
    ({}, 12, ("auto",) * 6, 2),
    ({}, 15, ("auto",) * 7, 2),
    ({}, 16, ("auto",) * 8, 2),
    ({}, 64, ("auto",) * 8, 8),
    ({"AEDR_SCORING__THREADS": "2"}, 16, ("auto",), 2),  # threads alone: the one scorer of before
    ({"AEDR_SCORING__SCORERS": "1"}, 4, ("auto",), 4),  # one scorer: torch's threads fill the cores
    ({"AEDR_SCORING__SCORERS": "3"}, 8, ("auto",) * 3, 2),
    ({"AEDR_SCORING__SCORERS": "3"}, 2, ("auto",) * 3, 1),
    ({"AEDR_SCORING__SCORERS": "2", "AEDR_SCORING__THREADS": "3"}, 2, ("auto",) * 2, 3),
    ({"AEDR_SCORING__DEVICE": "cpu"}, 3, ("cpu",) * 3, 1),
    ({"AEDR_SCORING__DEVICES": "cpu,cpu"}, 8, ("cpu", "cpu"), 0),  # a list is taken as it is
])
def test_the_cpu_scoring_layout(env, cores, devices, threads):
    assert load_settings(None, env).scoring.layout(on_gpu=False, cores=cores) == (devices, threads)


def test_on_a_gpu_one_scorer_per_device():
    assert ScoringSettings().layout(on_gpu=True, cores=16) == (("auto",), 0)
    assert ScoringSettings(devices=("cuda:0", "cuda:1")).layout(on_gpu=True, cores=16) == (("cuda:0", "cuda:1"), 0)
    assert ScoringSettings(scorers=2).layout(on_gpu=True, cores=16) == (("auto",) * 2, 0)


@pytest.mark.parametrize("text, cores", [
    ("max 100000", None), ("", None), ("-1 100000", None), ("garbage", None), ("x 100000", None),
    ("400000 100000", 4), ("150000 100000", 2), ("50000 100000", 1), ("100000 0", None),
])
def test_a_cgroup_quota_in_whole_cores(text, cores):
    assert quota_cores(text) == cores


@pytest.mark.parametrize("proc, files, cores", [
    ("0::/\n", {"cpu.max": "200000 100000\n"}, 2),  # v2, the container's own view
    ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/cpu.max": "400000 100000", "kubepods/pod1/c1/cpu.max": "max 100000",
                                 "cpu.max": "max 100000"}, 4),  # v2, host namespace: a quota on the pod
    ("0::/system.slice/aedr.service\n", {"system.slice/aedr.service/cpu.max": "300000 100000",
                                          "system.slice/cpu.max": "800000 100000"}, 3),  # the tightest wins
    ("0::/a/../../etc\n", {"etc/cpu.max": "100000 100000"}, None),  # no climbing out of the mount
    ("4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n", {"cpu/cpu.cfs_quota_us": "150000\n",
                                                          "cpu/cpu.cfs_period_us": "100000\n"}, 2),  # v1, docker
    ("4:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
    ("4:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "100000"}, None),  # no period: no quota
    ("", {"cpu.max": "100000 100000"}, None),  # not in a cgroup we can name
    ("garbage\n::\n0::\n", {}, None),
])
def test_the_quota_is_found_on_the_process_cgroup_or_above(proc, files, cores):
    assert cgroup_quota(proc, files.get) == cores


@pytest.mark.parametrize("value", ["cuda:0,cuda:1", " cuda:0 , cuda:1 ", '["cuda:0", "cuda:1"]', ' ["cuda:0","cuda:1"]'])
def test_a_list_from_the_environment_is_comma_separated_or_json(value):
    assert load_settings(None, {"AEDR_SCORING__DEVICES": value}).scoring.devices == ("cuda:0", "cuda:1")


@pytest.mark.parametrize("value", ["[1, 2]", '["cuda:0", ', '["cuda:0" "cuda:1"]'])
def test_a_bad_json_list_from_the_environment_says_which_key(value):
    with pytest.raises(ConfigError, match="scoring.devices"):
        load_settings(None, {"AEDR_SCORING__DEVICES": value})


def test_a_bracketed_host_is_still_a_host():
    assert load_settings(None, {"AEDR_FETCH__ALLOWED_HOSTS": "[::1]"}).fetch.allowed_hosts == ("[::1]",)


def test_scorers_have_a_ceiling():
    assert load_settings(None, {"AEDR_SCORING__SCORERS": "256"}).scoring.scorers == 256
    with pytest.raises(ConfigError, match="scoring.scorers must be ≤ 256"):
        load_settings(None, {"AEDR_SCORING__SCORERS": "1000000000000"})


def test_scorers_and_a_device_list_are_not_both_set():
    with pytest.raises(ConfigError, match="scoring.scorers and scoring.devices"):
        load_settings(None, {"AEDR_SCORING__SCORERS": "2", "AEDR_SCORING__DEVICES": "cpu"})
    with pytest.raises(ConfigError, match="scoring.scorers"):
        load_settings(None, {"AEDR_SCORING__SCORERS": "-1"})


def test_database_url_from_a_secret_file(tmp_path):
    secret = tmp_path / "db-url"
    secret.write_text("postgresql+psycopg2://aedr:pw@db/aedr\n")
    s = load_settings(None, {"AEDR_DATABASE__URL_FILE": str(secret)})
    assert s.database.resolved_url() == "postgresql+psycopg2://aedr:pw@db/aedr"


@pytest.mark.parametrize(
    "text, env, message",
    [
        ("[kafka]\ntopik = 'x'\n", {}, "unknown key"),
        ("[kafkaa]\n", {}, "unknown section"),
        ("", {"AEDR_BATCH__MAX_SIZE": "many"}, "batch.max_size"),
        ("[batch]\nmax_size = 0\n", {}, "max_size"),
        ("[[watchlist]]\nname = 'a'\nmodel = 'm'\ncalibration = 'c'\n[[watchlist]]\nname = 'a'\nmodel = 'm'\ncalibration = 'c'\n",
         {}, "duplicate"),
        ("[[watchlist]]\nname = 'a'\n", {}, "watchlist[0]"),
        ("not toml [", {}, "config file"),
    ],
)
def test_bad_settings_say_which_key(tmp_path, text, env, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_settings(path, env)


def ev(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_valid_event():
    e = decode_event(ev(event_id="a1", image_b64="AAAA", uploaded_at="2026-11-28T10:00:00Z", metadata={"u": 1}), 10**6)
    assert (e.event_id, e.image_b64, e.metadata) == ("a1", "AAAA", {"u": 1})


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"\xff\xfe", "bad_json"),
        (b"{", "bad_json"),
        (b"[1, 2]", "schema"),
        (ev(image_b64="AAAA"), "schema"),
        (ev(event_id="", image_b64="AAAA"), "schema"),
        (ev(event_id=5, image_b64="AAAA"), "schema"),
        (ev(event_id="x" * 300, image_b64="AAAA"), "schema"),
        (ev(event_id="a"), "schema"),
        (ev(event_id="a", image_b64="AAAA", image_url="https://x/y.png"), "schema"),
        (ev(event_id="a", image_url=7), "schema"),
        (ev(event_id="a", image_b64="AAAA", uploaded_at="yesterday"), "schema"),
        (ev(event_id="a", image_b64="AAAA", metadata=[1]), "schema"),
        (ev(event_id="a", image_b64="AAAA", extra=1), "schema"),
        (ev(event_id="a", image_b64="AAAA", schema_version=2), "schema"),
        (None, "schema"),
        (b"{" * 100_000, "bad_json"),
        (ev(event_id="a", image_b64="A" * 2_000_000), "too_large"),
    ],
)
def test_invalid_events_have_reasons(value, reason):
    with pytest.raises(InvalidEvent) as info:
        decode_event(value, max_bytes=10**6)
    assert info.value.reason == reason


def test_base64_is_strict():
    assert decode_b64_image(base64.b64encode(b"png!").decode(), 100) == b"png!"
    with pytest.raises(InvalidEvent) as info:
        decode_b64_image("not base64!!", 100)
    assert info.value.reason == "decode"
    with pytest.raises(InvalidEvent) as info:
        decode_b64_image("A" * 1000, 100)
    assert info.value.reason == "too_large"


def test_event_id_hint_and_alert():
    assert event_id_hint(ev(event_id="abc", image_b64=3)) == "abc"
    assert event_id_hint(b"garbage") is None
    event = UploadEvent("e1", image_b64="AAAA", metadata={"user": "u1"})
    matches = [Match("a", 1.0, 2.0), Match("b", 0.9, 1.0)]
    best = best_match(matches)
    assert best is not None and best.model == "a"  # 0.5 < 0.9: furthest below its threshold
    assert best_match([]) is None
    alert = json.loads(alert_message(event, [m.as_dict() for m in matches], best.as_dict(), "2026-11-28T00:00:00Z"))
    assert alert["best_match"] == {"model": "a", "score": 1.0, "threshold": 2.0}
    assert alert["event_id"] == "e1" and alert["metadata"] == {"user": "u1"} and len(alert["matches"]) == 2


def test_passwords_are_refused_in_the_file_and_accepted_from_the_environment(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text('[database]\nurl = "postgresql+psycopg2://aedr:hunter2@db/aedr"\n')
    with pytest.raises(ConfigError, match="contains a password") as info:
        load_settings(path, {})
    assert "hunter2" not in str(info.value)
    path.write_text('[kafka]\nsasl_password = "hunter2"\n')
    with pytest.raises(ConfigError, match="AEDR_KAFKA__SASL_PASSWORD"):
        load_settings(path, {})
    path.write_text('[database]\nurl = "postgresql+psycopg2://aedr@db/aedr"\n')
    env = {"AEDR_DATABASE__URL": "postgresql+psycopg2://aedr:hunter2@db/aedr", "AEDR_KAFKA__SASL_PASSWORD": "pw"}
    settings = load_settings(path, env)
    assert settings.database.url.endswith("hunter2@db/aedr") and settings.kafka.sasl_password == "pw"
    assert "hunter2" not in mask_url(settings.database.url)
