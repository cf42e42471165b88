"""Hostile files: every extractor returns within a bounded time with a recorded error, never a
crash; and a property test that mutates real fixtures at random."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import provenance_fixtures as F
from worker.provenance import KINDS, STRENGTHS, ProvenanceResult, ProvenanceSettings, extract

DEFAULT = ProvenanceSettings()
TIME_BOUND_S = 2.0  # per file, all kinds; measured worst case is far lower (docs/PROVENANCE.md)
RGB = F.photo(64, 64)
JPEG = F.encode(RGB, "JPEG", quality=90)


def _zip_bomb_xmp_png() -> bytes:
    body = b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + zlib.compress(b" " * (64 << 20), 9)
    chunks = F.png_chunks(F.encode(RGB, "PNG"))
    return F.png_from_chunks(chunks[:1] + [(b"iTXt", body)] + chunks[1:])


def _deep_xmp() -> bytes:
    return F.png_with_xmp(RGB, b"<a>" * 100_000 + b"</a>" * 100_000)  # 700 kB: under the XMP limit


def hostile_cases() -> dict[str, tuple[bytes, list[tuple[str, str]]]]:
    """name → (file, the (kind, reason) errors expected)."""
    signed = F.sign(F.encode(F.photo(300, 300), "JPEG"), "image/jpeg", F.make_chain("hostile"))
    many_app11 = F.jpeg_with_segments(JPEG, F.app11_segments(b"\x00" * 600 * 100, per_segment=100))
    caBX = F.png_from_chunks(F.png_chunks(F.encode(RGB, "PNG"))[:1] + [(b"caBX", struct.pack(">I4s", 0xFFFFFFF0, b"jumb"))]
                             + F.png_chunks(F.encode(RGB, "PNG"))[1:])
    return {
        "billion laughs in XMP": (F.jpeg_with_xmp(JPEG, F.billion_laughs()), [("iptc", "malformed")]),
        "12 000 source types in one XMP": (F.png_with_xmp(RGB, F.xmp_many_source_types(12_000)), [("file", "limit")]),
        "20 000 broken XMP packets": (
            F.jpeg_with_segments(JPEG, [(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x")] * 20_000), [("file", "limit")]),
        "external entity in XMP": (F.jpeg_with_xmp(JPEG, F.external_entity("file:///etc/passwd")), [("iptc", "malformed")]),
        "zip bomb in XMP iTXt": (_zip_bomb_xmp_png(), [("iptc", "limit")]),
        "100 000-deep XMP": (_deep_xmp(), []),
        "oversized XMP": (F.jpeg_with_segments(JPEG, [(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + b" " * 60_000)] * 20),
                          [("iptc", "limit")]),
        "JUMBF box declaring 1 TiB": (F.jpeg_with_segments(JPEG, F.app11_segments(b"\x00" * 1000, declared=1 << 40)),
                                      [("c2pa", "limit")]),
        "600 APP11 segments": (many_app11, [("c2pa", "limit")]),
        "5 MB of APP11 garbage": (F.jpeg_with_segments(JPEG, F.app11_segments(bytes(range(256)) * 20_000)), [("c2pa", "limit")]),
        "1 MB of APP11 garbage": (F.jpeg_with_segments(JPEG, F.app11_segments(bytes(range(256)) * 4_000)), []),
        "PNG caBX declaring 4 GB": (caBX, [("c2pa", "limit")]),
        "10 000 PNG text chunks": (F.many_text_chunks(RGB, 10_000), [("metadata", "limit")]),
        "60 000-entry EXIF in PNG": (F.png_with_exif_chunk(RGB, F.huge_exif()), [("metadata", "limit")]),
        "20 000-entry EXIF within the byte limit": (
            F.png_with_exif_chunk(RGB, F.huge_exif(20_000)), []),
        "signed JPEG truncated at half": (signed[: len(signed) // 2], [("watermark", "malformed")]),
        "signed JPEG truncated in the manifest": (signed[:3000], [("watermark", "malformed")]),
        "file over the byte limit": (b"\xff\xd8" + b"\x00" * (DEFAULT.max_bytes + 1), [("file", "limit")]),
        "empty file": (b"", [("watermark", "malformed")]),
    }


CASES = hostile_cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_file_is_bounded_and_recorded(name):
    data, expected = CASES[name]
    start = time.perf_counter()
    result = extract(data, DEFAULT)
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_BOUND_S, f"{name}: {elapsed:.2f} s"
    assert isinstance(result, ProvenanceResult)
    assert [(e.kind, e.reason) for e in result.errors if (e.kind, e.reason) in expected] == expected, result.errors
    assert not [e for e in result.errors if e.reason == "internal"], result.errors
    assert len(result.signals) <= 32 and len(result.errors) <= 32  # each would be a row and an alert line
    json.dumps(result.as_dict(), allow_nan=False)


def test_hostile_files_stay_within_a_memory_bound_in_a_fresh_process():
    """ru_maxrss of a fresh process: after one ordinary extraction (libraries loaded), all the
    hostile files together may add at most 256 MiB (native allocations included)."""
    code = (
        "import json, resource\n"
        "from tests.unit.test_provenance_hostile import CASES, DEFAULT\n"
        "from tests import provenance_fixtures as F\n"
        "from worker.provenance import extract\n"
        "extract(F.encode(F.watermarked(F.photo(512, 512)), 'PNG'), DEFAULT)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for data, _ in CASES.values():\n"
        "    extract(data, DEFAULT)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'before_kib': before, 'after_kib': after}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["after_kib"] - figures["before_kib"] < 256 * 1024, figures


# --- property test: random mutations of real fixtures -------------------------------------------

def _fixtures() -> dict[str, bytes]:
    chain = F.make_chain("property")
    small = F.photo(64, 80)
    return {
        "signed jpeg": F.sign(F.encode(small, "JPEG"), "image/jpeg", chain),
        "signed png": F.sign(F.encode(small, "PNG"), "image/png", chain),
        "xmp jpeg": F.jpeg_with_xmp(F.encode(small, "JPEG"), F.xmp_packet(creator_tool="Adobe Firefly")),
        "a1111 png": F.png_with_text(small, {"parameters": F.a1111_parameters()}),
        "comfyui png": F.png_with_text(small, {"prompt": F.comfyui_prompt()}, compressed=True),
        "exif jpeg": F.jpeg_with_exif(small, software="Adobe Firefly", user_comment=F.a1111_parameters()),
        "xmp webp": F.encode(small, "WEBP", xmp=F.xmp_packet()),
    }


FIXTURES = _fixtures()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(FIXTURES)),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=16),
    insert=st.tuples(st.integers(0, 1 << 20), st.binary(max_size=64)),
    cut=st.one_of(st.none(), st.integers(0, 1 << 20)),
)
def test_mutated_fixtures_always_give_a_result_within_the_time_bound(name, flips, insert, cut):
    data = bytearray(FIXTURES[name])
    for position, value in flips:
        data[position % len(data)] = value
    at, blob = insert
    data[at % len(data):at % len(data)] = blob
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    start = time.perf_counter()
    result = extract(bytes(data), DEFAULT)
    assert time.perf_counter() - start < TIME_BOUND_S
    for signal in result.signals:
        assert signal.kind in KINDS and signal.strength in STRENGTHS
    assert not [e for e in result.errors if e.reason == "internal"], result.errors
    assert len(result.signals) <= 32 and len(result.errors) <= 32  # each would be a row and an alert line
    json.dumps(result.as_dict(), allow_nan=False)


def test_the_hostile_corpus_provenance_variants_are_bounded_and_recorded():
    """The same files tests/hostile.py sends through the worker (scored or dead-lettered there);
    here extraction must return quickly with its errors recorded."""
    from PIL import Image

    from tests.hostile import provenance_variants

    for name, data, _ in provenance_variants(Image.fromarray(F.photo(48, 48))):
        start = time.perf_counter()
        result = extract(data, DEFAULT)
        assert time.perf_counter() - start < TIME_BOUND_S, name
        assert not [e for e in result.errors if e.reason == "internal"], (name, result.errors)
        if name.startswith(("billion", "external")):
            assert [(e.kind, e.reason) for e in result.errors] == [("iptc", "malformed")]
        if name == "remote C2PA manifest":
            assert [(e.kind, e.reason) for e in result.errors] == [("c2pa", "remote_reference")]
        if name == "tampered C2PA manifest":
            assert [(s.kind, s.strength) for s in result.signals] == [("c2pa", "invalid")]
