"""Provenance in the stream worker (issue 17, phase 2), without services: the `[provenance]`
settings, the start-up checks, the prepare step, the decision (rows, the alert's section, the
skip rule), the metrics counted at commit, and `aedr score`'s provenance line. The same paths
run through `aedr serve` on the real broker and Postgres in
tests/integration/test_provenance_serve.py."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from tests import provenance_fixtures as F
from tests.unit.test_pipeline import rig, watchlist  # noqa: F401 (the module-scoped watchlist fixture)
from worker.config import ConfigError, FetchSettings, ImageSettings, load_settings
from worker.fetch import Fetcher
from worker.harness import REPO
from worker.messages import Message
from worker.outcomes import Judged, Publishing, build
from worker.prepare import prepare
from worker.provenance import ProvenanceResult, ProvenanceSettings, Signal
from worker.provenance.settings import TrustAnchors
from worker.provenance_step import Findings, Provenance, load
from worker.scoring import ImageTooSmall

CHAIN = F.make_chain("worker tests")
ANCHORS = TrustAnchors(pem=CHAIN.root_pem.decode(), count=1)
NO_WATERMARK = ProvenanceSettings(kinds=("c2pa", "iptc", "metadata"))
SKIPPING = ProvenanceSettings(kinds=("c2pa", "iptc", "metadata"), skip_reconstruction_when_trusted=True)


def upload(event_id: str, data: bytes) -> bytes:
    return json.dumps({"event_id": event_id, "image_b64": base64.b64encode(data).decode(),
                       "metadata": {"n": event_id}}).encode()


def jpeg(side: int = 32) -> bytes:
    return F.encode(F.photo(side, side), "JPEG", quality=95)


def trusted(side: int = 32) -> bytes:
    return F.sign(jpeg(side), "image/jpeg", CHAIN)


def untrusted(side: int = 32) -> bytes:
    return F.sign(jpeg(side), "image/jpeg", F.make_chain("someone else"))


def xmp(side: int = 32) -> bytes:
    return F.jpeg_with_xmp(jpeg(side), F.xmp_packet())


def message(value: bytes, offset: int = 0) -> Message:
    return Message("uploads", 0, offset, b"k", value)


def prepared(data: bytes, step: Provenance, cut=lambda pixels: ("cut", pixels.shape)):
    return prepare(message(upload("e", data)), Fetcher(FetchSettings(), 1 << 20), ImageSettings(), cut,
                   inspect=step.inspect)


# ------------------------------------------------------------------ settings and start-up


def test_the_provenance_section_is_typed_and_overridden_by_the_environment(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text('[provenance]\ntrust_anchor_paths = ["/etc/aedr/c2pa.pem"]\nalert_strengths = ["trusted", "untrusted"]\n'
                    'watermark_max_chance = 1e-7\nmax_xmp_bytes = 65536\n')
    s = load_settings(path, {"AEDR_PROVENANCE__SKIP_RECONSTRUCTION_WHEN_TRUSTED": "true",
                             "AEDR_PROVENANCE__KINDS": "c2pa,watermark"}).provenance
    assert s.trust_anchor_paths == ("/etc/aedr/c2pa.pem",) and s.alert_strengths == ("trusted", "untrusted")
    assert s.watermark_max_chance == 1e-7 and s.max_xmp_bytes == 65536 and s.kinds == ("c2pa", "watermark")
    assert s.skip_reconstruction_when_trusted is True and s.enabled is True
    default = load_settings(None, {}).provenance
    assert default == ProvenanceSettings() and default.enabled and not default.skip_reconstruction_when_trusted
    assert default.alert_strengths == ("trusted",)


@pytest.mark.parametrize("text, message", [
    ('[provenance]\nalert_strengths = ["signed"]\n', "provenance.alert_strengths: unknown"),
    ('[provenance]\nkinds = ["exif"]\n', "provenance.kinds: unknown"),
    ('[provenance]\nmax_bytes = "many"\n', "provenance.max_bytes: expected int"),
    ('[provenance]\nmax_text_chunks = 0\n', "provenance.max_text_chunks must be ≥ 1"),
    ('[provenance]\nwatermark_max_pixels = 1000\n', "provenance.watermark_max_pixels"),
    ('[provenance]\nwatermark_max_chance = 0.01\n', "watermark_max_chance ≤ watermark_record_chance"),
    ('[provenance]\nskip_reconstruction_when_trusted = true\nalert_strengths = ["unsigned"]\n',
     "skip_reconstruction_when_trusted needs"),
    ('[provenance]\ntrust_anchors = "x.pem"\n', "provenance: unknown key(s) trust_anchors"),
    ('[provenance]\nenabled = "maybe"\n', "provenance.enabled: expected bool"),
])
def test_bad_provenance_settings_are_one_line_config_errors(tmp_path, text, message):
    path = tmp_path / "w.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_trust_anchors_are_read_once_at_start_and_a_bad_file_is_a_config_error(tmp_path):
    good = tmp_path / "anchors.pem"
    good.write_bytes(CHAIN.root_pem)
    step = load(ProvenanceSettings(trust_anchor_paths=(str(good),)))
    assert step.anchors.count == 1 and step.anchors.pem.startswith("-----BEGIN CERTIFICATE-----")
    bad = tmp_path / "key.pem"
    bad.write_bytes(CHAIN.key_pem)  # a private key, not a certificate
    for path in (bad, tmp_path / "missing.pem"):
        with pytest.raises(ConfigError, match=f"provenance.trust_anchor_paths: {path}"):
            load(ProvenanceSettings(trust_anchor_paths=(str(path),)))
    assert load(ProvenanceSettings(enabled=False, trust_anchor_paths=(str(bad),))).enabled is False  # not read when off


def test_a_missing_extraction_library_stops_the_start_with_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "imwatermark", None)  # `import imwatermark` now raises ImportError
    with pytest.raises(ConfigError, match="kind 'watermark' needs invisible-watermark.*libGL"):
        load(ProvenanceSettings())
    assert load(NO_WATERMARK).enabled  # without the kind, the library is not needed


def test_serve_with_a_bad_trust_anchor_exits_2_with_one_error_line(tmp_path):
    config = tmp_path / "w.toml"
    config.write_text(f'[provenance]\ntrust_anchor_paths = ["{tmp_path / "nope.pem"}"]\n'
                      f'[database]\nurl = "sqlite:///{tmp_path / "db.sqlite"}"\n[metrics]\nport = 0\n')
    out = subprocess.run([sys.executable, "-m", "worker.cli", "serve", "--config", str(config)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("aedr: error:")]
    assert errors == [f"aedr: error: provenance.trust_anchor_paths: {tmp_path / 'nope.pem'}: "
                      f"[Errno 2] No such file or directory: '{tmp_path / 'nope.pem'}'"]
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------ prepare


def test_prepare_reads_provenance_from_the_bytes_and_the_decoded_pixels():
    p = prepared(trusted(), Provenance(NO_WATERMARK, ANCHORS))
    assert p.rejection is None and p.image == ("cut", (32, 32, 3))
    (signal,) = p.provenance.result.signals
    assert (signal.kind, signal.strength, signal.generator) == ("c2pa", "trusted", "stable-diffusion-xl")
    assert p.provenance.alerting == (True,) and not p.provenance.scoring_skipped and p.provenance.seconds > 0
    p = prepared(untrusted(), Provenance(NO_WATERMARK, ANCHORS))
    assert [s.strength for s in p.provenance.result.signals] == ["untrusted"] and p.provenance.alerting == (False,)
    assert prepared(trusted(), Provenance(ProvenanceSettings(enabled=False), ANCHORS)).provenance is None


def test_the_skip_rule_cuts_nothing_for_a_trusted_credential_only():
    def cut(pixels):
        raise AssertionError("the image must not be cut")

    p = prepared(trusted(), Provenance(SKIPPING, ANCHORS), cut)
    assert p.image is None and p.rejection is None and p.provenance.scoring_skipped
    for data, anchors in ((untrusted(), ANCHORS), (xmp(), ANCHORS), (trusted(), TrustAnchors())):
        p = prepared(data, Provenance(SKIPPING, anchors))  # the last: no anchor, so not trusted
        assert p.image is not None and not p.provenance.scoring_skipped


def test_extraction_never_fails_the_event_and_survives_a_rejection(monkeypatch):
    import worker.provenance_step as step_module

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in an extractor")

    monkeypatch.setattr(step_module, "extract", broken)
    p = prepared(trusted(), Provenance(NO_WATERMARK, ANCHORS))
    assert p.image is not None and p.rejection is None
    assert [(e.kind, e.reason) for e in p.provenance.result.errors] == [("file", "internal")]
    monkeypatch.undo()

    def too_small(pixels):
        raise ImageTooSmall("image 32×32 is smaller than one 64×64 cell")

    p = prepared(trusted(), Provenance(NO_WATERMARK, ANCHORS), too_small)
    assert p.rejection.reason == "decode" and p.provenance.result.signals[0].strength == "trusted"


# ------------------------------------------------------------------ decision and rows


def test_rows_are_clean_for_any_database_and_detail_is_json():
    nasty = "Stable\x00Diffusion \udcff" + "x" * 300
    result = ProvenanceResult(
        (Signal("metadata", "unsigned", nasty, True, {"software": nasty, "n": 1.5}),),
    )
    findings = Provenance(ProvenanceSettings()).decide(result)
    (row,), errors = findings.records()
    assert errors == () and row.idx == 0 and row.alerted is False
    assert len(row.generator) == 128 and "\x00" not in row.generator
    row.generator.encode("utf-8")  # no lone surrogate left
    assert "\x00" not in row.detail  # escaped as \u0000 in the JSON text
    assert json.loads(row.detail) == {"software": nasty.replace("\udcff", "?"), "n": 1.5}  # the lone surrogate replaced


def judged(findings: Findings | None, attributions=()) -> Judged:
    from worker.events import UploadEvent
    from worker.prepare import Prepared

    p = Prepared(message(b"{}"), UploadEvent("e1", image_b64="AAAA", metadata={"u": 1}), image=None, provenance=findings)
    return Judged(p, datetime(2026, 11, 29, tzinfo=timezone.utc), attributions=attributions)


def test_an_event_alerts_from_provenance_alone_and_the_alert_says_why():
    mark = Signal("watermark", "unsigned", "stable-diffusion-xl", True, {"family_chance": 1e-9})
    note = Signal("iptc", "unsigned", None, True, {"term": "trainedAlgorithmicMedia"})
    findings = Provenance(ProvenanceSettings()).decide(ProvenanceResult((note, mark)))
    (result,) = build([judged(findings)], Publishing("alerts", "dlq"), datetime(2026, 11, 29, tzinfo=timezone.utc))
    alert = json.loads(result.outbound.value)
    assert alert["best_match"] is None and alert["matches"] == [] and alert["alerted_by"] == ["provenance"]
    assert [s["kind"] for s in alert["provenance"]["alerting"]] == ["watermark"]
    assert [s["kind"] for s in alert["provenance"]["evidence"]] == ["iptc"]
    assert alert["provenance"]["scoring_skipped"] is False and alert["metadata"] == {"u": 1}
    row = result.row
    assert [(r.idx, r.kind, r.alerted) for r in row.provenance] == [(0, "iptc", False), (1, "watermark", True)]
    assert (result.alerted, result.reason, row.best_match) == (True, None, None)
    # Evidence alone (nothing alerting, no match): stored, not alerted.
    (quiet,) = build([judged(Provenance(ProvenanceSettings()).decide(ProvenanceResult((note,))))], Publishing("a", "d"),
                  datetime(2026, 11, 29, tzinfo=timezone.utc))
    assert quiet.outbound is None and len(quiet.row.provenance) == 1


def test_whatever_a_file_holds_the_alert_is_strict_utf8_json():
    odd = Signal("metadata", "unsigned", "gen\udcff\x00", True, {"x": float("nan"), "y": [float("inf"), "\udc80"]})
    findings = Provenance(ProvenanceSettings(alert_strengths=("unsigned",))).decide(ProvenanceResult((odd,)))
    (result,) = build([judged(findings)], Publishing("alerts", "dlq"), datetime(2026, 11, 29, tzinfo=timezone.utc))
    alert = json.loads(result.outbound.value.decode("utf-8"))  # strict UTF-8, no NaN
    (signal,) = alert["provenance"]["alerting"]
    assert signal["detail"] == {"x": None, "y": [None, "?"]} and signal["generator"] == "gen?\x00"
    (row,), _ = findings.records()
    assert json.loads(row.detail) == {"x": None, "y": [None, "?"]}


def test_without_provenance_the_alert_has_no_section():
    from worker.storage import AttributionRecord

    match = AttributionRecord("sd15", 1e-3, 1e-4, 10.0, 0.5, 5.0, 6.0, True)
    (result,) = build([judged(None, (match,))], Publishing("alerts", "dlq"), datetime(2026, 11, 29, tzinfo=timezone.utc))
    alert = json.loads(result.outbound.value)
    assert alert["alerted_by"] == ["aedr"] and "provenance" not in alert and alert["best_match"]["model"] == "sd15"


# ------------------------------------------------------------------ the worker loop


def test_the_worker_stores_signals_alerts_and_counts_them_at_commit(watchlist):  # noqa: F811
    values = [upload("trusted", trusted()), upload("xmp", xmp()), upload("plain", F.encode(F.photo(32, 32), "PNG")),
              upload("truncated", trusted()[:3000])]
    r = rig(watchlist, {0: values}, inspect=Provenance(NO_WATERMARK, ANCHORS).inspect)
    r.step_until_committed(len(values))
    events = {e["event_id"]: e for e in r.store.events()}
    assert [events[e]["status"] for e in ("trusted", "xmp", "plain", "truncated")] == ["scored"] * 3 + ["failed"]
    rows = {(s["event_id"], s["idx"]): s for s in r.store.provenance_signals()}
    assert {k: (v["kind"], v["strength"], v["alerted"]) for k, v in rows.items()} == {
        ("trusted", 0): ("c2pa", "trusted", True), ("xmp", 0): ("iptc", "unsigned", False)}
    assert json.loads(rows[("trusted", 0)]["detail"])["validation_state"] == "Trusted"
    assert r.store.provenance_errors() == []
    alerts = {a["event_id"]: a for a in (json.loads(m.value) for m in r.published("alerts"))}
    assert "trusted" in alerts and "provenance" in alerts["trusted"]["alerted_by"]
    assert [s["strength"] for s in alerts["trusted"]["provenance"]["alerting"]] == ["trusted"]
    matched = {a["event_id"] for a in r.store.attributions() if a["belongs"]}
    for event_id, alert in alerts.items():  # an alert exists iff a model matched or provenance alerts
        assert alert["alerted_by"] == (["aedr"] if event_id in matched else []) + (["provenance"] if event_id == "trusted" else [])
    assert set(alerts) == matched | {"trusted"}
    assert r.sample("aedr_provenance_signals_total", kind="c2pa", strength="trusted") == 1
    assert r.sample("aedr_provenance_signals_total", kind="iptc", strength="unsigned") == 1
    assert r.sample("aedr_provenance_signals_total", kind="watermark", strength="unsigned") == 0
    assert r.sample("aedr_provenance_alerts_total") == 1 and r.sample("aedr_provenance_skips_total") == 0
    assert r.sample("aedr_stage_seconds_count", stage="provenance") == 3


def test_a_skipped_event_is_scored_without_the_models_and_alerts_from_its_credential(watchlist):  # noqa: F811
    values = [upload("trusted", trusted()), upload("untrusted", untrusted())]
    r = rig(watchlist, {0: values}, inspect=Provenance(SKIPPING, ANCHORS).inspect)
    r.step_until_committed(len(values))
    events = {e["event_id"]: e for e in r.store.events()}
    assert events["trusted"]["status"] == "scored" and events["trusted"]["best_match"] is None
    assert {a["event_id"] for a in r.store.attributions()} == {"untrusted"}  # the models ran for it only
    alert = next(json.loads(m.value) for m in r.published("alerts") if json.loads(m.value)["event_id"] == "trusted")
    assert alert["alerted_by"] == ["provenance"] and alert["best_match"] is None and alert["matches"] == []
    assert alert["provenance"]["scoring_skipped"] is True
    assert alert["provenance"]["alerting"][0]["generator"] == "stable-diffusion-xl"
    assert r.sample("aedr_provenance_skips_total") == 1
    assert r.sample("aedr_events_total", outcome="scored") == 2
    assert sum(r.sample("aedr_verdicts_total", model=m, verdict=v, mode="alert") or 0
               for m in ("alpha", "beta") for v in ("match", "no_match")) == 2  # one image × two models


# ------------------------------------------------------------------ aedr score


def test_aedr_score_prints_a_provenance_line_per_image_that_carries_provenance(tmp_path, capsys):
    from tests.conftest import build_module
    from worker.cli import main

    model = tmp_path / "model"
    build_module("kl", seed=4).save_pretrained(model)
    images = tmp_path / "images"
    images.mkdir()
    (images / "signed.jpg").write_bytes(trusted())
    (images / "xmp.jpg").write_bytes(xmp())
    (images / "plain.png").write_bytes(F.encode(F.photo(32, 32), "PNG"))
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(CHAIN.root_pem)
    assert main(["score", "--model", str(model), "--trust-anchor", str(anchor), str(images)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum("model" in r for r in records) == 3
    lines = {r["image"].rsplit("/", 1)[1]: r for r in records if r.get("kind") == "provenance"}
    assert set(lines) == {"signed.jpg", "xmp.jpg"}
    assert [(s["kind"], s["strength"]) for s in lines["signed.jpg"]["alerting"]] == [("c2pa", "trusted")]
    assert lines["xmp.jpg"]["alerting"] == [] and lines["xmp.jpg"]["evidence"][0]["kind"] == "iptc"
    assert lines["signed.jpg"]["errors"] == [] and lines["signed.jpg"]["scoring_skipped"] is False
    assert main(["score", "--model", str(model), str(images / "signed.jpg")]) == 0  # no anchors: untrusted
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"provenance"' in x]
    assert line["alerting"] == [] and line["evidence"][0]["strength"] == "untrusted"
    assert main(["score", "--model", str(model), "--no-provenance", str(images)]) == 0
    assert not [x for x in capsys.readouterr().out.splitlines() if '"provenance"' in x]
    assert main(["score", "--model", str(model), "--trust-anchor", str(tmp_path / "no.pem"), str(images)]) == 2
    assert capsys.readouterr().err.startswith("aedr: error: provenance.trust_anchor_paths:")
