"""A generated corpus of hostile and exotic upload events, each with its expected outcome.

Every event is (class, value bytes, expected) where expected is a dead-letter reason, or
"scored" for valid-but-exotic images (CMYK, palette, 16-bit, alpha, animated), which must be
converted and scored, not refused. Deterministic for a seed; sizes are kept modest, except a
few oversized payloads.
"""

from __future__ import annotations

import base64
import io
import json
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from worker.corpus import png_header

SCORED = "scored"


@dataclass(frozen=True)
class Hostile:
    cls: str
    value: bytes
    expected: str


def _img(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _event(event_id: str, **fields) -> bytes:
    return json.dumps({"event_id": event_id, **fields}).encode()


def _b64_event(event_id: str, data: bytes) -> bytes:
    return _event(event_id, image_b64=base64.b64encode(data).decode())


def corpus(n: int = 10_000, seed: int = 0, oversized_mb: int = 24) -> list[Hostile]:
    """About `n` bad events spread over the classes below, plus valid exotic images."""
    rng = np.random.default_rng(seed)
    out: list[Hostile] = []
    valid_png = _encode(Image.fromarray(_img(rng)), "PNG")
    valid_jpeg = _encode(Image.fromarray(_img(rng)), "JPEG")
    valid_webp = _encode(Image.fromarray(_img(rng)), "WEBP")
    valid_gif = _encode(Image.fromarray(_img(rng)).convert("P"), "GIF")
    counter = iter(range(10**9))

    def eid() -> str:
        return f"h{seed}-{next(counter)}"

    def add(cls: str, value: bytes, expected: str) -> None:
        out.append(Hostile(cls, value, expected))

    per = max(1, -(-n // 14))  # 14 classes of bad events
    for _ in range(per):  # invalid UTF-8
        junk = b"\xff" + bytes(rng.integers(128, 256, int(rng.integers(0, 200)), dtype=np.uint8))  # 0xFF: never UTF-8
        add("invalid utf-8", b'{"event_id": "' + junk + b'"}', "bad_json")
    for _ in range(per):  # invalid JSON
        text = _event(eid(), image_b64="AAAA").decode()
        cut = int(rng.integers(1, len(text) - 1))
        add("invalid json", text[:cut].encode(), "bad_json")
    for i in range(per):  # not an object
        add("json not an object", json.dumps([[1, 2], "x", None, 3.5, True][i % 5]).encode(), "schema")
    wrong_types = [
        {"event_id": 7, "image_b64": "AAAA"}, {"event_id": None, "image_b64": "AAAA"},
        {"event_id": ["x"], "image_b64": "AAAA"}, {"event_id": "a", "image_b64": 12},
        {"event_id": "a", "image_url": {"u": 1}}, {"event_id": "a", "image_b64": "AAAA", "metadata": "m"},
        {"event_id": "a", "image_b64": "AAAA", "uploaded_at": 12345}, {"event_id": "a", "image_b64": "AAAA", "schema_version": "1"},
        {"event_id": "a", "image_b64": "AAAA", "schema_version": True},
    ]
    def unique(fields: dict) -> bytes:  # each message its own id, so each outcome is checkable
        return json.dumps({k: (eid() if k == "event_id" and v == "a" else v) for k, v in fields.items()}).encode()

    for i in range(per):
        add("wrong types", unique(wrong_types[i % len(wrong_types)]), "schema")
    missing_extra = [
        {}, {"event_id": "a"}, {"image_b64": "AAAA"}, {"event_id": "a", "image_b64": "AAAA", "image_url": "https://x/y"},
        {"event_id": "a", "image_b64": "AAAA", "extra": 1}, {"event_id": "", "image_b64": "AAAA"},
        {"event_id": "   ", "image_b64": "AAAA"}, {"event_id": "a\x00b", "image_b64": "AAAA"},
        {"event_id": "a", "image_b64": "AAAA", "uploaded_at": "not a date"},
    ]
    for i in range(per):
        add("missing or extra fields", unique(missing_extra[i % len(missing_extra)]), "schema")
    for i in range(per):  # huge strings (but under the payload limit)
        size = int(rng.integers(300, 100_000))
        field = ["event_id", "uploaded_at", "image_url"][i % 3]
        payload = {"event_id": "a" * size if field == "event_id" else eid(), field: "x" * size}
        if field == "uploaded_at":
            payload["image_b64"] = "AAAA"
        add("huge strings", json.dumps(payload).encode(), "schema" if field != "image_url" else "fetch")
    for i in range(per):  # bad base64
        bad = ["@@@@", "AAA", "A" * 5, "not base64 at all!", "AAAA====", "YWJj\n\x00"][i % 6]
        add("bad base64", _event(eid(), image_b64=bad), "decode")
    for i in range(per):  # truncated images
        data = [valid_png, valid_jpeg, valid_webp, valid_gif][i % 4]
        cut = int(rng.integers(8, max(9, len(data) // 2)))
        add("truncated image", _b64_event(eid(), data[:cut]), "decode")
    for i in range(per):  # corrupt images: random bytes flipped past the header
        data = bytearray([valid_png, valid_jpeg, valid_webp, valid_gif][i % 4])
        start = 64 if len(data) > 128 else 16
        for _ in range(int(rng.integers(8, 64))):
            data[int(rng.integers(start, len(data)))] = int(rng.integers(0, 256))
        add("corrupt image", _b64_event(eid(), bytes(data)), "decode|scored")
    for _ in range(per):  # not an image at all
        add("not an image", _b64_event(eid(), bytes(rng.integers(0, 256, int(rng.integers(1, 500)), dtype=np.uint8))),
            "decode")
    for i in range(per):  # zero-size and 1×1
        data = b"" if i % 2 == 0 else _encode(Image.fromarray(_img(rng, 1)), "PNG")
        add("zero-size or 1x1", _b64_event(eid(), data) if data else _event(eid(), image_b64=""),
            "schema" if not data else "decode")
    for i in range(per):  # decompression bombs: tiny files declaring huge images
        add("decompression bomb", _b64_event(eid(), png_header(50_000 + i, 60_000)), "too_large")
    for i in range(per):  # URL fetching refused by default
        url = ["http://169.254.169.254/latest/meta-data/", "file:///etc/passwd", "gopher://x/", "ftp://a/b.png",
               "http://127.0.0.1:5432/", "https://example.com/a.png", "javascript:alert(1)", "//no-scheme"][i % 8]
        add("forbidden url", _event(eid(), image_url=url), "fetch")
    for _ in range(per):  # tombstones and empty values
        add("empty message", b"", "bad_json")
    oversized = max(3, per // 100)
    for _ in range(oversized):  # oversized payloads (beyond the image byte limit)
        blob = base64.b64encode(b"\0" * (oversized_mb << 20)).decode()
        add("oversized payload", _event(eid(), image_b64=blob), "too_large")
    # Valid exotic images: converted and scored.
    exotic = []
    base = Image.fromarray(_img(rng, 48))
    exotic.append(("cmyk jpeg", _encode(base.convert("CMYK"), "JPEG")))
    exotic.append(("palette png", _encode(base.convert("P"), "PNG")))
    exotic.append(("rgba png", _encode(base.convert("RGBA"), "PNG")))
    exotic.append(("la png", _encode(base.convert("LA"), "PNG")))
    exotic.append(("16-bit png", _encode(Image.fromarray((np.arange(48 * 48, dtype=np.uint16) * 28).reshape(48, 48)), "PNG")))
    exotic.append(("webp", _encode(base, "WEBP", lossless=True)))
    frames = [base, Image.fromarray(_img(rng, 48))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    exotic.append(("animated gif", buf.getvalue()))
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    exotic.append(("animated png", buf.getvalue()))
    for i in range(max(8, per // 25)):
        name, data = exotic[i % len(exotic)]
        add(f"valid exotic: {name}", _b64_event(eid(), data), SCORED)
    # Valid images carrying hostile provenance (issue 17): the image itself is fine, so each is
    # scored; only a zip-bombed XMP chunk makes Pillow refuse the PNG (its MAX_TEXT_CHUNK).
    variants = provenance_variants(Image.fromarray(_img(rng, 48)))
    for i in range(max(len(variants), per // 25)):
        name, data, expected = variants[i % len(variants)]
        add(f"hostile provenance: {name}", _b64_event(eid(), data), expected)
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def provenance_variants(base: Image.Image) -> list[tuple[str, bytes, str]]:
    """(name, file, expected outcome) for images whose provenance data is hostile: entity bombs
    and external entities in XMP, a zip bomb in an XMP chunk, a JUMBF box declaring 1 TiB, 600
    APP11 segments, 10 000 text chunks, a 40 000-entry EXIF, a C2PA manifest that lives at a URL
    (a loopback port nothing listens on: it must never be fetched), and a tampered manifest."""
    from tests import provenance_fixtures as F

    rgb = np.asarray(base.convert("RGB"))
    jpeg = _encode(base, "JPEG")
    chain = F.make_chain("hostile corpus")
    bomb = b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + zlib.compress(b" " * (64 << 20), 9)
    png_chunks = F.png_chunks(_encode(base, "PNG"))
    return [
        ("billion laughs in XMP", F.jpeg_with_xmp(jpeg, F.billion_laughs()), SCORED),
        ("external entity in XMP", F.jpeg_with_xmp(jpeg, F.external_entity("file:///etc/passwd")), SCORED),
        ("zip bomb in XMP iTXt", F.png_from_chunks(png_chunks[:1] + [(b"iTXt", bomb)] + png_chunks[1:]), "decode"),
        ("JUMBF box declaring 1 TiB", F.jpeg_with_segments(jpeg, F.app11_segments(b"\0" * 1000, declared=1 << 40)), SCORED),
        ("600 APP11 segments", F.jpeg_with_segments(jpeg, F.app11_segments(b"\0" * 60_000, per_segment=100)), SCORED),
        ("10 000 PNG text chunks", F.many_text_chunks(rgb, 10_000), SCORED),
        ("40 000-entry EXIF", F.png_with_exif_chunk(rgb, F.huge_exif(40_000)), SCORED),  # < 1 MiB as base64
        ("remote C2PA manifest", F.sign(jpeg, "image/jpeg", chain, remote_url="http://127.0.0.1:9/m.c2pa"), SCORED),
        ("tampered C2PA manifest", F.tamper_manifest(F.sign(jpeg, "image/jpeg", chain)), SCORED),
    ]
