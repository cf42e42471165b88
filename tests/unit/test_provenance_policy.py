"""Policy (which signals alert on their own), settings, trust anchors, and the package's import
cost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import provenance_fixtures as F
from worker.provenance import (
    ProvenanceConfigError, ProvenanceResult, ProvenanceSettings, Signal, alerts, load_trust_anchors,
    raises_alert, trusted_generator,
)


def claim(kind="c2pa", strength="trusted", generative=True, generator="stable-diffusion-xl"):
    return Signal(kind, strength, generator, generative, {})


def mark(family_chance: float):
    return Signal("watermark", "unsigned", "stable-diffusion-xl", True, {"family_chance": family_chance})


DEFAULT = ProvenanceSettings()


@pytest.mark.parametrize("signal,alerts_by_default", [
    (claim(), True),
    (claim(generative=False), False),
    (claim(strength="untrusted"), False),
    (claim(strength="invalid"), False),
    (claim(kind="iptc", strength="unsigned"), False),
    (claim(kind="metadata", strength="unsigned"), False),
    (mark(1e-6), True),
    (mark(1.01e-6), False),
])
def test_default_policy(signal, alerts_by_default):
    assert raises_alert(signal, DEFAULT) is alerts_by_default


def test_alert_strengths_are_configurable():
    lenient = ProvenanceSettings(alert_strengths=("trusted", "untrusted", "unsigned"))
    result = ProvenanceResult((claim(strength="untrusted"), claim(kind="iptc", strength="unsigned"), claim(strength="invalid")))
    assert [s.strength for s in alerts(result, lenient)] == ["untrusted", "unsigned"]
    assert alerts(ProvenanceResult((mark(1e-9),)), ProvenanceSettings(watermark_alert=False)) == []


def test_trusted_generator_needs_a_trusted_generative_credential_with_a_name():
    assert trusted_generator(ProvenanceResult((claim(strength="untrusted"), claim()))) == "stable-diffusion-xl"
    assert trusted_generator(ProvenanceResult((claim(generator=None),))) is None
    assert trusted_generator(ProvenanceResult((claim(generative=False),))) is None
    assert trusted_generator(ProvenanceResult((claim(kind="iptc", strength="unsigned"), mark(1e-12)))) is None


def test_signal_values_are_checked_and_serialise():
    with pytest.raises(ValueError):
        Signal("exif", "unsigned", None, False)
    with pytest.raises(ValueError):
        Signal("c2pa", "valid", None, False)
    assert json.loads(json.dumps(claim().as_dict())) == {
        "kind": "c2pa", "strength": "trusted", "generator": "stable-diffusion-xl", "generative": True, "detail": {}}


@pytest.mark.parametrize("kwargs", [
    {"alert_strengths": ("trusted", "signed")}, {"kinds": ("c2pa", "exif")},
    {"watermark_max_chance": 0.0}, {"watermark_max_chance": 1e-3, "watermark_record_chance": 1e-4},
    {"watermark_max_pixels": 1000},
])
def test_inconsistent_settings_are_refused(kwargs):
    with pytest.raises(ProvenanceConfigError):
        ProvenanceSettings(**kwargs)


def test_trust_anchors_load_from_pem_files_and_bad_files_are_refused(tmp_path):
    good = tmp_path / "anchors.pem"
    good.write_bytes(F.make_chain("a").root_pem + F.make_chain("b").root_pem)
    anchors = load_trust_anchors([str(good)])
    assert anchors.count == 2 and anchors.pem.count("BEGIN CERTIFICATE") == 2 and anchors.sources == (str(good),)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ProvenanceConfigError, match="bad.pem"):
        load_trust_anchors([str(bad)])
    with pytest.raises(ProvenanceConfigError, match="missing.pem"):
        load_trust_anchors([str(tmp_path / "missing.pem")])


def test_disabled_extraction_returns_nothing():
    assert extract_disabled() == ProvenanceResult()


def extract_disabled():
    from worker.provenance import extract

    return extract(F.jpeg_with_xmp(F.encode(F.photo(32, 32), "JPEG"), F.xmp_packet()), ProvenanceSettings(enabled=False))


def test_importing_the_package_loads_no_third_party_library():
    code = ("import sys, worker.provenance, worker.provenance.policy; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'numpy', 'PIL', 'c2pa', 'cv2', 'imwatermark', 'defusedxml', 'cryptography', 'torch', 'pywt'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
