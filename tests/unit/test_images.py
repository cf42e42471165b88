"""Image decoding: exotic but valid modes are converted; hostile bytes get a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from worker.config import ImageSettings
from worker.corpus import png_header
from worker.events import Reason
from worker.images import ImageError, decode_image


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def test_png_round_trips_exactly():
    out = decode_image(encode(Image.fromarray(RGB), "PNG"))
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize(
    "mode, fmt",
    [("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("RGB", "WEBP"), ("P", "GIF")],
)
def test_exotic_modes_become_rgb(mode, fmt):
    out = decode_image(encode(Image.fromarray(RGB).convert(mode), fmt))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)


def test_rgba_keeps_colour_pixels():
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 10, np.uint8)])
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(rgba), "PNG")), RGB)


def test_sixteen_bit_grey_is_scaled_not_saturated():
    grey16 = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80).astype(np.uint16)
    out = decode_image(encode(Image.fromarray(grey16), "PNG"))
    assert out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out[..., 0], np.round(grey16 / 65535 * 255).astype(np.uint8))
    assert len(np.unique(out)) > 200  # not clipped to white


def test_animated_gif_takes_first_frame():
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 255)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buf.getvalue()).max() == 0


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", Reason.DECODE),
        (b"hello, not an image", Reason.DECODE),
        (encode(Image.fromarray(RGB), "PNG")[:60], Reason.DECODE),
        (encode(Image.fromarray(RGB), "JPEG")[:200], Reason.DECODE),
        (encode(Image.fromarray(RGB[:1, :1]), "PNG"), Reason.DECODE),
        (png_header(100_000, 100_000), Reason.TOO_LARGE),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "1x1", "bomb"],
)
def test_bad_bytes_get_a_reason(data, reason):
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.reason == reason


def test_byte_limit():
    data = encode(Image.fromarray(RGB), "PNG")
    with pytest.raises(ImageError) as info:
        decode_image(data, ImageSettings(max_bytes=len(data) - 1))
    assert info.value.reason == Reason.TOO_LARGE


def ico_embedding(png: bytes) -> bytes:
    """An ICO whose one entry (declared 256×256) is an embedded PNG of any real size."""
    import struct

    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


@pytest.mark.parametrize("data", [
    ico_embedding(png_header(8000, 7000)),  # would decode 8000×7000 before any size check
    b"BLP2" + b"\x00" * 200,
    b"DDS |" + b"\x00" * 200,
    b"8BPS\x00\x01" + b"\x00" * 200,
])
def test_formats_outside_the_allowlist_are_refused_before_decoding(data):
    with pytest.raises(ImageError) as info:
        decode_image(data, ImageSettings(max_pixels=1_000_000))
    assert info.value.reason == Reason.DECODE and "accepted format" in str(info.value)
