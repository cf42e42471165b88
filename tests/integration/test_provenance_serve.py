"""Provenance through `aedr serve` on the real broker (Tansu) and the real Postgres (issue 17).

Every fixture is made here (tests/provenance_fixtures.py: a test certificate chain, signed and
tampered images, XMP, A1111/ComfyUI metadata, the SDXL watermark, hostile files). One worker
runs with the chain's root as its trust anchor and `skip_reconstruction_when_trusted` on, and
each upload must come out with the right signals at the right strength in `provenance_signals`,
the right errors in `provenance_errors`, the right alert (or none), and the right counts on
/metrics. Hostile provenance must neither fail an event nor stall its partition: every
extraction is observed in `aedr_stage_seconds{stage="provenance"}` under the 2.5 s bucket.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from tests import provenance_fixtures as F
from tests.hostile import provenance_variants
from tests.integration.conftest import ServeLauncher, produce_values, read_topic, wait_for
from tests.unit.test_provenance_hostile import hostile_cases
from worker.storage import SqlStore

MODELS = ["kl-f4c4"]
STALL_BOUND_S = 2.5  # an aedr_stage_seconds bucket; phase 1's property test bounds one file at 2 s


@dataclass(frozen=True)
class Case:
    data: bytes
    signals: list[tuple[str, str, bool]] = field(default_factory=list)  # (kind, strength, alerted), in order
    errors: list[tuple[str, str]] = field(default_factory=list)  # (kind, reason)
    status: str = "scored"
    skipped: bool = False  # a trusted credential named the generator: no attribution rows


def cases(chain: F.Chain) -> dict[str, Case]:
    rgb = F.photo(64, 64)
    jpeg = F.encode(rgb, "JPEG", quality=95)
    png = F.encode(rgb, "PNG")
    other = F.make_chain("not an anchor")
    trusted_jpeg = F.sign(jpeg, "image/jpeg", chain)
    out = {
        "c2pa-trusted-jpeg": Case(trusted_jpeg, [("c2pa", "trusted", True)], skipped=True),
        "c2pa-trusted-png": Case(F.sign(png, "image/png", chain), [("c2pa", "trusted", True)], skipped=True),
        "c2pa-untrusted": Case(F.sign(jpeg, "image/jpeg", other), [("c2pa", "untrusted", False)]),
        "c2pa-tampered-pixels": Case(F.tamper_pixels(trusted_jpeg), [("c2pa", "invalid", False)]),
        "c2pa-tampered-manifest": Case(F.tamper_manifest(trusted_jpeg), [("c2pa", "invalid", False)]),
        "iptc-jpeg": Case(F.jpeg_with_xmp(jpeg, F.xmp_packet()), [("iptc", "unsigned", False)]),
        "iptc-png": Case(F.png_with_xmp(rgb, F.xmp_packet()), [("iptc", "unsigned", False)]),
        "a1111-png": Case(F.png_with_text(rgb, {"parameters": F.a1111_parameters()}), [("metadata", "unsigned", False)]),
        "a1111-jpeg-exif": Case(F.jpeg_with_exif(rgb, user_comment=F.a1111_parameters()), [("metadata", "unsigned", False)]),
        "comfyui-png": Case(F.png_with_text(rgb, {"prompt": F.comfyui_prompt(), "workflow": F.comfyui_workflow()}),
                            [("metadata", "unsigned", False)]),
        "sdxl-watermark": Case(F.encode(F.watermarked(F.photo(256, 256), "sdxl"), "PNG"), [("watermark", "unsigned", True)]),
        "plain": Case(png),
    }
    # Hostile provenance: recorded as errors, the image still scored (or refused by the decoder
    # itself, before provenance is read). Watermark/file errors of phase 1's list come from its
    # own pixel decode, which the worker does not need: they are not expected here.
    hostile = hostile_cases()
    for name in ("billion laughs in XMP", "external entity in XMP", "100 000-deep XMP", "oversized XMP",
                 "JUMBF box declaring 1 TiB", "600 APP11 segments", "PNG caBX declaring 4 GB", "10 000 PNG text chunks",
                 "60 000-entry EXIF in PNG"):
        data, errors = hostile[name]
        out[f"hostile: {name}"] = Case(data, errors=[e for e in errors if e[0] not in ("watermark", "file")])
    out["hostile: zip bomb in XMP iTXt"] = Case(hostile["zip bomb in XMP iTXt"][0], status="failed")
    # Amplification: at most 32 signals and 32 errors per file reach the rows, metrics and alert.
    out["hostile: 12 000 source types"] = Case(hostile["12 000 source types in one XMP"][0],
                                               [("iptc", "unsigned", False)] * 32, [("file", "limit")])
    out["hostile: 20 000 broken XMP packets"] = Case(hostile["20 000 broken XMP packets"][0],
                                                     errors=[("iptc", "limit")] + [("iptc", "malformed")] * 30
                                                     + [("file", "limit")])
    from PIL import Image

    variants = {name: data for name, data, _ in provenance_variants(Image.fromarray(rgb))}
    out["hostile: remote C2PA manifest"] = Case(variants["remote C2PA manifest"], errors=[("c2pa", "remote_reference")])
    return out


def upload(event_id: str, data: bytes) -> bytes:
    return json.dumps({"event_id": event_id, "image_b64": base64.b64encode(data).decode(),
                       "metadata": {"case": event_id}}).encode()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def test_provenance_through_serve(broker, pg_url, tmp_path):
    chain = F.make_chain("serve anchor")
    anchor = tmp_path / "anchors.pem"
    anchor.write_bytes(chain.root_pem)
    table = cases(chain)
    dep = ServeLauncher(broker.bootstrap, pg_url, tmp_path, MODELS, sections={
        "provenance": {"trust_anchor_paths": [str(anchor)], "skip_reconstruction_when_trusted": True},
        "scoring": {"device": "cpu", "threads": 1},
    })
    produce_values(broker.bootstrap, dep.topic, [upload(k, c.data) for k, c in table.items()],
                   [k.encode() for k in table])
    serve = dep.start()
    store = SqlStore.from_url(pg_url)
    try:
        wait_for(lambda: store.count_events() == len(table), 50, "every event stored", diagnostics=dep.logs)
        wait_for(lambda: scrape(serve.metrics_port).get(("aedr_events_total", (("outcome", "scored"),)), 0)
                 + scrape(serve.metrics_port).get(("aedr_events_total", (("outcome", "dead_lettered"),)), 0) == len(table),
                 10, "metrics to count every event", diagnostics=dep.logs)
        events = {e["event_id"]: e for e in store.events()}
        signals: dict[str, list] = {}
        for row in sorted(store.provenance_signals(), key=lambda r: r["idx"]):
            signals.setdefault(row["event_id"], []).append(row)
        errors: dict[str, list] = {}
        for row in sorted(store.provenance_errors(), key=lambda r: r["idx"]):
            errors.setdefault(row["event_id"], []).append(row)
        attributed = Counter(a["event_id"] for a in store.attributions())
        matched = {a["event_id"] for a in store.attributions() if a["belongs"]}

        # The events table and the signals table: each case with its strengths.
        for name, case in table.items():
            assert events[name]["status"] == case.status, (name, events[name]["error"])
            got = [(r["kind"], r["strength"], r["alerted"]) for r in signals.get(name, [])]
            assert got == case.signals, name
            assert [r["idx"] for r in signals.get(name, [])] == list(range(len(got)))
            assert [(r["kind"], r["reason"]) for r in errors.get(name, [])] == case.errors, name
            if case.status == "scored":
                assert attributed[name] == (0 if case.skipped else len(MODELS)), name
        assert events["c2pa-trusted-jpeg"]["best_match"] is None
        detail = json.loads(signals["sdxl-watermark"][0]["detail"])
        assert (detail["payload"], detail["matching_bits"], detail["bits"]) == ("sdxl", 48, 48)
        assert signals["c2pa-trusted-jpeg"][0]["generator"] == "stable-diffusion-xl"
        assert json.loads(signals["c2pa-untrusted"][0]["detail"])["validation_state"] == "Valid"

        # Alerts: exactly for a model match or an alerting signal, saying which.
        alerting = {name for name, c in table.items() if any(a for _, _, a in c.signals)}
        expected_alerts = (matched | alerting) & {n for n, c in table.items() if c.status == "scored"}
        alerts = {a["event_id"]: a for a in (json.loads(r.value) for r in
                                             read_topic(broker.bootstrap, dep.alerts, len(expected_alerts)))}
        assert set(alerts) == expected_alerts
        for name, alert in alerts.items():
            assert alert["alerted_by"] == (["aedr"] if name in matched else []) + (["provenance"] if name in alerting else [])
            section = alert["provenance"]
            assert [(s["kind"], s["strength"]) for s in section["alerting"]] == \
                [(k, s) for k, s, a in table[name].signals if a]
            assert [(s["kind"], s["strength"]) for s in section["evidence"]] == \
                [(k, s) for k, s, a in table[name].signals if not a]
            assert section["scoring_skipped"] is table[name].skipped
            assert alert["metadata"] == {"case": name}
            if name not in matched:
                assert alert["best_match"] is None and alert["matches"] == []
        assert alerts["c2pa-trusted-jpeg"]["alerted_by"] == ["provenance"]

        # Metrics over HTTP, by value.
        m = scrape(serve.metrics_port)
        by_signal = Counter((k, s) for c in table.values() for k, s, _ in c.signals)
        for (metric, labels), value in m.items():
            if metric == "aedr_provenance_signals_total":
                assert value == by_signal.get((dict(labels)["kind"], dict(labels)["strength"]), 0), labels
        assert sum(v for (n, _), v in m.items() if n == "aedr_provenance_signals_total") == sum(by_signal.values()) > 10
        by_error = Counter(e for c in table.values() for e in c.errors)
        assert sum(v for (n, _), v in m.items() if n == "aedr_provenance_errors_total") == sum(by_error.values()) > 5
        for (kind, reason), count in by_error.items():
            assert m[("aedr_provenance_errors_total", (("kind", kind), ("reason", reason)))] == count
        assert m[("aedr_provenance_alerts_total", ())] == len(alerting)
        assert m[("aedr_provenance_skips_total", ())] == sum(c.skipped for c in table.values()) == 2
        assert m[("aedr_alerts_total", ())] == len(expected_alerts)

        # No partition stalls on provenance: every extraction finished within the bound.
        n_read = sum(1 for c in table.values() if c.status == "scored")
        assert m[("aedr_stage_seconds_count", (("stage", "provenance"),))] == n_read
        assert m[("aedr_stage_seconds_bucket", (("le", str(STALL_BOUND_S)), ("stage", "provenance")))] == n_read
        assert serve.proc.poll() is None
    finally:
        store.close()
        assert serve.terminate(30) == 0, dep.logs()
