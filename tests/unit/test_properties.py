"""Property-based tests: whatever the bytes, the decoders return a value or their own error,
with a known reason, and never anything else (no crash, no other exception type)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from worker.events import REASONS, InvalidEvent, UploadEvent, decode_b64_image, decode_event
from worker.config import ImageSettings
from worker.images import ImageError, decode_image

LIMITS = ImageSettings(max_bytes=1 << 20, max_pixels=1 << 22, min_side=8)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": json_values | st.text(min_size=1, max_size=300),
        "image_url": json_values | st.sampled_from(["https://a/b.png", "file:///x", ""]),
        "image_b64": json_values | st.sampled_from(["AAAA", "", "iVBORw0KGgo="]),
        "uploaded_at": json_values | st.sampled_from(["2026-11-28T00:00:00Z", "2026-13-01"]),
        "metadata": json_values,
        "schema_version": json_values,
        "surprise": json_values,
    },
)


def _valid_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _valid_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


VALID = {"png": _valid_png(), "jpeg": _valid_jpeg()}


def _decode_or_reason(value: bytes | None) -> UploadEvent | str:
    try:
        return decode_event(value, max_bytes=1 << 20)
    except InvalidEvent as exc:
        assert exc.reason in REASONS and str(exc)
        return exc.reason


@FAST
@given(st.binary(max_size=2000))
def test_any_bytes_decode_to_an_event_or_a_reason(value):
    _decode_or_reason(value)


@FAST
@given(event_like)
def test_any_json_object_decodes_to_a_valid_event_or_a_reason(obj):
    result = _decode_or_reason(json.dumps(obj).encode())
    if isinstance(result, UploadEvent):  # what passes really is an event: the invariants hold
        assert isinstance(result.event_id, str) and result.event_id.strip()
        assert (result.image_url is None) != (result.image_b64 is None)
        assert isinstance(result.metadata, dict)


@FAST
@given(st.text(max_size=400))
def test_any_b64_text_gives_bytes_or_a_reason(text):
    try:
        assert isinstance(decode_b64_image(text, 1 << 20), bytes)
    except InvalidEvent as exc:
        assert exc.reason in ("decode", "too_large")


def _image_or_reason(data: bytes):
    try:
        out = decode_image(data, LIMITS)
    except ImageError as exc:
        assert exc.reason in ("decode", "too_large")
        return exc.reason
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and min(out.shape[:2]) >= 8
    return out


@FAST
@given(st.binary(max_size=3000))
def test_any_bytes_decode_to_pixels_or_a_reason(data):
    _image_or_reason(data)


@FAST
@given(st.sampled_from(sorted(VALID)), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=20),
       st.integers(0, 10_000))
def test_mutated_and_truncated_images_decode_or_give_a_reason(fmt, flips, cut):
    data = bytearray(VALID[fmt])
    for position, value in flips:
        data[position % len(data)] = value
    _image_or_reason(bytes(data[: max(1, cut % (len(data) + 1))]))


@FAST
@given(st.integers(1, 70_000), st.integers(1, 70_000))
def test_declared_dimensions_are_checked_before_decoding(width, height):
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    result = _image_or_reason(png)
    if width * height > LIMITS.max_pixels:
        assert result == "too_large"


def test_b64_of_a_valid_image_round_trips():
    data = VALID["png"]
    assert decode_b64_image(base64.b64encode(data).decode(), 1 << 20) == data
