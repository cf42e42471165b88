"""Image bytes → RGB uint8 pixels, with limits checked before any pixel is decoded.

Uploads are hostile by default: a few hundred bytes can declare a 100 000² image (a
decompression bomb), and valid images come in modes a scorer cannot take directly (CMYK, palette,
16-bit grey, alpha, animation). `decode_image` either returns the RGB array that is scored or
raises `ImageError` with a short machine-readable `reason` that the dead-letter topic carries.
No global PIL setting is changed.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from .config import ImageSettings
from .events import InvalidEvent, Reason


# The formats an upload may be in. Pillow opens many more, and some of them decode pixels before
# their true size is known (an ICO's embedded PNG) or break in ways no other format does (BLP,
# DDS, PSD): an allowlist keeps the decoder surface to what uploads really are.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG covers MPO too


class ImageError(InvalidEvent):
    """The bytes are not an image we will score; `reason` is `Reason.DECODE` or `TOO_LARGE`."""


def decode_image(data: bytes, limits: ImageSettings = ImageSettings()) -> np.ndarray:
    """Decode the first frame of an image to RGB uint8 (H, W, 3), or raise `ImageError`."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_bytes:
        raise ImageError(Reason.TOO_LARGE, f"image is {len(data)} bytes; limit {limits.max_bytes}")
    if not data:
        raise ImageError(Reason.DECODE, "image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                width, height = im.size
                if width * height > limits.max_pixels:
                    raise ImageError(
                        Reason.TOO_LARGE,
                        f"image declares {width}×{height} pixels; limit {limits.max_pixels}",
                    )
                if min(width, height) < limits.min_side:
                    raise ImageError(
                        Reason.DECODE, f"image is {width}×{height}; both sides must be ≥ {limits.min_side}"
                    )
                im.seek(0)
                return _to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(Reason.TOO_LARGE, f"decompression bomb refused: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(Reason.DECODE, f"not an image in an accepted format ({', '.join(FORMATS)})") from None
    except Exception as exc:  # anything a decoder raises on these bytes is the bytes' doing
        raise ImageError(Reason.DECODE, f"corrupt image: {type(exc).__name__}: {exc}"[:300]) from None


def _to_rgb(im) -> np.ndarray:
    """Convert any PIL mode to RGB uint8 without resampling."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: PIL's convert("RGB") saturates; scale to 8 bits instead.
        arr = np.asarray(im, dtype=np.uint32 if mode == "I" else np.uint16)
        top = 65535 if mode != "I" or arr.max() > 255 else 255
        arr8 = np.round(arr.astype(np.float64) * (255.0 / top)).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.stack([arr8] * 3, axis=-1))
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        arr8 = np.round(arr * scale).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.stack([arr8] * 3, axis=-1))
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")  # CMYK, L, LA, RGBA (alpha dropped), YCbCr, palette …
    arr = np.array(im, dtype=np.uint8)  # a writable copy, not PIL's read-only view
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(Reason.DECODE, f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)
