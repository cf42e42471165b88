"""The invisible watermark of the Stable Diffusion reference code, decoded with invisible-watermark.

Who embeds what (all with invisible-watermark's `dwtDct` method):
- SDXL (Stability AI generative-models, and diffusers' SDXL pipelines): a fixed 48-bit payload,
  `0b101100111110110010010000011110111011000110011110`.
- SD 1.x reference scripts (CompVis txt2img): the bytes "StableDiffusionV1" (136 bits).
- SD 2.x reference scripts (Stability AI stablediffusion): the bytes "SDV2" (32 bits).

How dwtDct works, and why we decode a region: the U plane (YUV) goes through a Haar DWT; each
4×4 block of the approximation band (an 8×8 pixel block) carries bit `k mod n`, where k is the
block's raster index over the whole image. A block's bit depends on that block only, so any
8-aligned rectangle can be decoded on its own as long as each block's global index is known. We
ask the library for one bit per block of the rectangle (a decoder of length = number of blocks:
its per-block decision, unchanged) and take the majority per payload bit ourselves, exactly as
the library does for the whole image (tests check the two agree bit for bit). This bounds the
cost: the library's decoder is a Python loop over blocks, so its time grows with the pixels
decoded; a band of `watermark_max_pixels` costs the same whatever the image size
(bench/provenance.py, docs/PROVENANCE.md). A downscale would not do: resizing moves the block grid and destroys the watermark
(docs/PROVENANCE.md, robustness table).

Chance: on an unmarked image each decoded bit matches the payload with probability about 1/2, so
k matching bits of n happen by chance with P(Binomial(n, 1/2) ≥ k). Three payloads × two channel
orders (BGR as the reference code writes; RGB as early diffusers SDXL pipelines wrote) are six
tests per image, so the per-image chance is bounded by 6 × P (Bonferroni). With the default
`watermark_max_chance` 1e-6 that requires ≥ 42 of 48 bits for SDXL (P = 5.0e-8 per test), ≥ 30 of
32 for SD 2 and ≥ 98 of 136 for SD 1 (`min_matching_bits`). The bits of a natural image are not
quite independent, so docs/PROVENANCE.md also reports the accuracies measured on unmarked photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

from .signals import UNSIGNED, WATERMARK, Signal

SDXL_BITS = tuple(int(b) for b in bin(0b101100111110110010010000011110111011000110011110)[2:])


def _bits_of(text: bytes) -> tuple[int, ...]:
    return tuple(int(b) for byte in text for b in f"{byte:08b}")


# name → (generator, payload bits)
PAYLOADS: dict[str, tuple[str, tuple[int, ...]]] = {
    "sdxl": ("stable-diffusion-xl", SDXL_BITS),
    "sd1": ("stable-diffusion-1", _bits_of(b"StableDiffusionV1")),
    "sd2": ("stable-diffusion-2", _bits_of(b"SDV2")),
}
CHANNEL_ORDERS = ("bgr", "rgb")
HYPOTHESES = len(PAYLOADS) * len(CHANNEL_ORDERS)
MIN_PIXELS = 256 * 256  # the library refuses smaller images (and the encoders skip them)
BLOCK = 8  # pixels per block side


def chance(matching: int, n: int) -> float:
    """P(Binomial(n, 1/2) ≥ matching): the chance of this many matching bits on an unmarked image."""
    return sum(comb(n, i) for i in range(max(matching, 0), n + 1)) / 2**n


def min_matching_bits(n: int, max_chance: float, hypotheses: int = HYPOTHESES) -> int:
    """The fewest matching bits of n whose chance, times the number of tests, is ≤ max_chance."""
    return next((k for k in range(n + 1) if chance(k, n) * hypotheses <= max_chance), n + 1)


@dataclass(frozen=True)
class Region:
    """An 8-aligned rectangle (pixels) of an image of the given width."""

    y0: int
    x0: int
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def region(height: int, width: int, max_pixels: int) -> Region | None:
    """The centred, 8-aligned band decoded: full rows when they fit, else a centred rectangle 256
    pixels high. None when the image is below the decoder's 256×256-pixel minimum."""
    h8, w8 = height // BLOCK * BLOCK, width // BLOCK * BLOCK
    if h8 * w8 < MIN_PIXELS:
        return None
    if h8 * w8 <= max_pixels:
        return Region(0, 0, h8, w8)
    rows = (max_pixels // w8) // BLOCK * BLOCK
    if rows * w8 >= MIN_PIXELS:
        return Region((h8 - rows) // 2 // BLOCK * BLOCK, 0, rows, w8)
    rows = min(256, h8)
    cols = min(w8, max(MIN_PIXELS // rows, max_pixels // rows) // BLOCK * BLOCK)
    return Region((h8 - rows) // 2 // BLOCK * BLOCK, (w8 - cols) // 2 // BLOCK * BLOCK, rows, cols)


def block_bits(rgb: np.ndarray, where: Region, order: str) -> np.ndarray:
    """The library's per-block decision (0/1) for every block of the region, in raster order."""
    from imwatermark import WatermarkDecoder

    crop = rgb[where.y0:where.y0 + where.height, where.x0:where.x0 + where.width]
    image = np.ascontiguousarray(crop[:, :, ::-1] if order == "bgr" else crop)
    blocks = (where.height // BLOCK) * (where.width // BLOCK)
    return np.asarray(WatermarkDecoder("bits", blocks).decode(image, "dwtDct"), dtype=np.float64)


def global_indices(where: Region, image_width: int) -> np.ndarray:
    """Raster index, over the whole image, of each block of the region."""
    rows, cols = where.height // BLOCK, where.width // BLOCK
    r, c = np.divmod(np.arange(rows * cols), cols)
    return (where.y0 // BLOCK + r) * (image_width // BLOCK) + where.x0 // BLOCK + c


def payload_bits(blocks: np.ndarray, indices: np.ndarray, n: int) -> np.ndarray:
    """Majority per payload bit, with the library's rule (mean × 255 > 127)."""
    slot = indices % n
    sums = np.bincount(slot, weights=blocks, minlength=n)
    counts = np.bincount(slot, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(counts > 0, sums / np.maximum(counts, 1), 0.0) * 255 > 127).astype(np.int8)


@dataclass(frozen=True)
class Match:
    payload: str
    order: str
    matching: int
    n: int
    region: Region

    @property
    def chance(self) -> float:
        return chance(self.matching, self.n)

    @property
    def family_chance(self) -> float:
        return min(1.0, self.chance * HYPOTHESES)


def matches(rgb: np.ndarray, max_pixels: int) -> list[Match]:
    """Every (payload, channel order) tried, or [] for an image too small. Two decoder passes
    (one per channel order) serve all three payloads."""
    height, width = rgb.shape[:2]
    where = region(height, width, max_pixels)
    if where is None:
        return []
    indices = global_indices(where, width)
    out: list[Match] = []
    for order in CHANNEL_ORDERS:
        blocks = block_bits(rgb, where, order)
        for name, (_, bits) in PAYLOADS.items():
            decoded = payload_bits(blocks, indices, len(bits))
            out.append(Match(name, order, int((decoded == np.asarray(bits)).sum()), len(bits), where))
    return out


def best_match(rgb: np.ndarray, max_pixels: int) -> Match | None:
    """The (payload, channel order) with the lowest chance, or None for an image too small."""
    return min(matches(rgb, max_pixels), key=lambda m: m.chance, default=None)


def signal_of(match: Match | None, record_chance: float, max_chance: float) -> Signal | None:
    """A watermark signal when the match is unlikely by chance (≤ record_chance per image)."""
    if match is None or match.family_chance > record_chance:
        return None
    generator = PAYLOADS[match.payload][0]
    r = match.region
    detail = {
        "payload": match.payload,
        "bits": match.n,
        "matching_bits": match.matching,
        "bit_accuracy": round(match.matching / match.n, 4),
        "chance_probability": match.chance,
        "family_chance": match.family_chance,
        "hypotheses": HYPOTHESES,
        "alert_min_matching_bits": min_matching_bits(match.n, max_chance),
        "channel_order": match.order,
        "region": [r.y0, r.x0, r.height, r.width],
    }
    return Signal(WATERMARK, UNSIGNED, generator, True, detail)
