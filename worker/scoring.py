"""The AEDR scoring core: pixels in, numbers out (../shared/METHOD.md, the "ours" variant).

For one watchlist autoencoder (E, D): x1 = D(E(x)), x2 = D(E(x1)); L1 = MSE(x, x1),
L2 = MSE(x1, x2); ratio t = L1/L2; calibrated score t' = t·H with H the GLCM homogeneity of the
scored pixels (the paper's score, kept exact). The same two passes also yield statistics the
paper does not use, at no extra forward pass: the high-frequency energy of each residual
(`highpass1`, `highpass2`) and how far the latent moves, E(x1) against E(x) (`latent_shift`,
`latent_var`). A calibration's method (worker.methods) turns them into the score it thresholds.

Large images are never scored whole: `tile_boxes` cuts at most `max_tiles` aligned tiles of at
most `tile`² pixels, so the work and memory per image are bounded whatever the upload's size,
and an image's statistics are the means over its tiles (equal-size tiles: the same numbers as
scoring the tiles' pixels together).

Why these choices (each differs from the reference code on purpose, see METHOD.md):
- never resample: an image is *cropped* to a multiple of the model's spatial factor, at offsets
  that are multiples of it, so the decoder's pixel grid lines up with the generator's;
- deterministic latents (posterior mode), so a score does not depend on batch position;
- losses in fp32 whatever the weights' dtype (FLUX-class losses are ~1e-5; bf16 loses them);
- the second pass takes x1 exactly as decoded: no clamp, no 8-bit rounding.

Nothing here picks a device, loads weights or does I/O: an `Encoder/Decoder` pair comes in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np
import torch

GLCM_LEVELS = 32
# L2 below this is treated as this: a perfectly idempotent reconstruction gives a huge, finite
# ratio instead of inf/NaN.
L2_FLOOR = 1e-12
PREPROCESSING_VERSION = 3  # 2: weights_dtype added; 3: at most max_tiles aligned tiles per image
# The preprocessing policy's defaults: at most 4 tiles of 512² (1 MP per image and model, whatever
# the upload's size; docs/ACCURACY.md "Uploads of any size"). Images up to 512² are one tile: scored
# exactly as before tiling existed.
DEFAULT_TILE = 512
DEFAULT_MAX_TILES = 4


class AutoencoderLike(Protocol):
    """What the core needs of a model: see `worker.models.Autoencoder`."""

    spatial_factor: int
    device: torch.device

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor: ...


class ImageTooSmall(ValueError):
    """The image has no full spatial-factor cell to score."""


@dataclass(frozen=True)
class Scores:
    """AEDR numbers for one (image, model). `score` is the paper's t' = ratio·H, always; a
    calibration's method may threshold another function of these numbers (worker.methods)."""

    loss1: float
    loss2: float
    ratio: float
    homogeneity: float
    score: float
    # Beyond the paper, from the same two passes (NaN when not computed, e.g. built by hand):
    highpass1: float = float("nan")  # mean squared high-pass of x1 − x (residual minus its 3×3 mean)
    highpass2: float = float("nan")  # the same for x2 − x1
    latent_shift: float = float("nan")  # MSE(E(x1), E(x)) in latent units
    latent_var: float = float("nan")  # variance of E(x) over channels and positions

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


STATISTICS = ("loss1", "loss2", "highpass1", "highpass2", "latent_shift", "latent_var")
# Bumped whenever a statistic's definition changes: a fused calibration records the version it
# was fitted on and is refused under another (worker.methods).
STATISTICS_VERSION = 1
STATISTICS_DEFINITION = {
    "highpass": "mean over C,H,W of (d - mean3x3(d))^2, replicate padding; d = x1 - x (1), x2 - x1 (2)",
    "latent_shift": "mean over latent C,H,W of (E(x1) - E(x))^2, E = posterior mode / pre-quantisation latents",
    "latent_var": "variance of E(x) over latent C,H,W (population)",
    "tiles": "each statistic is the mean over the image's tiles; H the mean of the tiles' H",
}


@dataclass(frozen=True)
class Crop:
    """A box (top, left, height, width) inside an image."""

    top: int
    left: int
    height: int
    width: int

    def apply(self, image: np.ndarray) -> np.ndarray:
        return image[self.top : self.top + self.height, self.left : self.left + self.width]


def crop_box(height: int, width: int, factor: int, tile: int | None = None) -> Crop:
    """The centred crop to a multiple of `factor`, at offsets that are multiples of `factor`.

    With `tile`, each side is at most `tile` (itself a multiple of `factor`), so images at least
    that large all give one shape and stack into one batch. No pixel is ever resampled.
    """
    if factor < 1:
        raise ValueError(f"spatial factor must be ≥ 1, got {factor}")
    if tile is not None and (tile < factor or tile % factor):
        raise ValueError(f"tile {tile} must be a positive multiple of the spatial factor {factor}")

    def side(n: int) -> tuple[int, int]:
        size = (n // factor) * factor
        if tile is not None:
            size = min(size, tile)
        offset = ((n - size) // 2 // factor) * factor
        return offset, size

    top, h = side(height)
    left, w = side(width)
    if h == 0 or w == 0:
        raise ImageTooSmall(f"image {width}×{height} is smaller than the model's {factor}-pixel cell")
    return Crop(top, left, h, w)


def tile_boxes(height: int, width: int, factor: int, tile: int | None = None,
               max_tiles: int | None = DEFAULT_MAX_TILES) -> list[Crop]:
    """The tiles an image is scored on: never resampled, all of one shape, at most `max_tiles`.

    Each side holds as many whole `tile`-pixel cells as fit (a side shorter than `tile` is one
    cell of its own length, cropped to a multiple of `factor`); the grid is centred with offsets
    that are multiples of `factor`. When the grid has more than `max_tiles` cells, `max_tiles` of
    them are taken evenly spaced in raster order (the diagonal of a square grid), so the tiles
    spread over the image; `max_tiles=1` is the centred tile. `tile=None` is the whole aligned
    image as one tile (unbounded).
    """
    box = crop_box(height, width, factor, tile)
    if tile is None or max_tiles == 1:
        return [box]
    rows = height // tile if box.height == tile else 1
    cols = width // tile if box.width == tile else 1
    top0 = ((height - rows * box.height) // 2 // factor) * factor
    left0 = ((width - cols * box.width) // 2 // factor) * factor
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    if max_tiles is not None and len(cells) > max_tiles:
        if max_tiles < 1:
            raise ValueError(f"max_tiles must be ≥ 1, got {max_tiles}")
        picks = np.round(np.linspace(0, len(cells) - 1, max_tiles)).astype(int)
        cells = [cells[i] for i in picks]
    return [Crop(top0 + r * box.height, left0 + c * box.width, box.height, box.width) for r, c in cells]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) → float32 (3, H, W) in [−1, 1]."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays (PIL gives them)
        image = image.copy()
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32)
    return x / 127.5 - 1.0


def gray_levels(image: np.ndarray, levels: int = GLCM_LEVELS) -> np.ndarray:
    """OpenCV's RGB→grey fixed point (ITU-R 601) in integers, then quantised to `levels`."""
    rgb = image.astype(np.int32)
    gray = (4899 * rgb[..., 0] + 9617 * rgb[..., 1] + 1868 * rgb[..., 2] + 8192) >> 14
    return (gray // (256 // levels)).astype(np.uint8)


def homogeneity(image: np.ndarray) -> float:
    """GLCM homogeneity Σ P(i,j)/(1+(i−j)²) at distance 1, angle 0, 32 levels, symmetric, normed.

    Exactly scikit-image's `graycoprops(graycomatrix(...), "homogeneity")`, computed without the
    matrix: P is the symmetric, normalised count of horizontally adjacent level pairs (a, b), and
    the weight is symmetric in (a, b), so the sum equals the mean of 1/(1+(a−b)²) over the pairs
    themselves. ~20× faster than building the 32×32 matrix (tested equal to 1e-12).
    """
    levels = gray_levels(image).astype(np.int32)
    diff = levels[:, 1:] - levels[:, :-1]
    return float(np.mean(1.0 / (1.0 + diff * diff)))


def _highpass_energy(d: torch.Tensor) -> torch.Tensor:
    """Per-image mean of (d − its 3×3 box mean)², replicate padding: the residual's energy above
    the lowest frequencies. A decoder's own output comes back with a smooth residual; a photo's
    residual keeps the fine detail the decoder cannot make.

    The 3×3 box is summed as rows then columns on a contiguous copy: `avg_pool2d` on the
    decoder's channels-last output took several times as long on a CPU (bench/highpass.py).
    bench/profile_scoring.py shows where the rest of a batch's time goes."""
    padded = torch.nn.functional.pad(d.contiguous(), (1, 1, 1, 1), mode="replicate")
    rows = padded[..., :-2] + padded[..., 1:-1] + padded[..., 2:]
    smooth = (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) / 9.0
    return (d - smooth).pow(2).mean(dim=(1, 2, 3))


@torch.inference_mode()
def reconstruction_stats(model: AutoencoderLike, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image statistics (`STATISTICS`) in fp32 for a batch x (N, 3, H, W) in [−1, 1]: the two
    reconstructions, x1 = D(E(x)) and x2 = D(E(x1)), and what they give for free (the latents
    E(x) and E(x1) are computed on the way). No pass beyond the paper's two."""
    if model.device.type == "cuda":  # pinned host memory: the copy overlaps with queued work
        x = x.pin_memory().to(model.device, non_blocking=True)
    else:
        x = x.to(model.device)
    if getattr(model, "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    z0 = model.encode(x)
    x1 = model.decode(z0)
    z1 = model.encode(x1)
    x2 = model.decode(z1)
    x, x1, x2, z0, z1 = x.float(), x1.float(), x2.float(), z0.float(), z1.float()
    d1, d2 = x1 - x, x2 - x1
    dims = tuple(range(1, z0.ndim))
    out = {
        "loss1": d1.pow(2).mean(dim=(1, 2, 3)),
        "loss2": d2.pow(2).mean(dim=(1, 2, 3)),
        "highpass1": _highpass_energy(d1),
        "highpass2": _highpass_energy(d2),
        "latent_shift": (z1 - z0).pow(2).mean(dim=dims),
        "latent_var": z0.var(dim=dims, unbiased=False),
    }
    return {k: v.cpu() for k, v in out.items()}


def reconstruction_losses(model: AutoencoderLike, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (L1, L2) in fp32 for a batch x (N, 3, H, W) in [−1, 1]."""
    stats = reconstruction_stats(model, x)
    return stats["loss1"], stats["loss2"]


def combine(loss1: float, loss2: float, h: float, **extra: float) -> Scores:
    """Ratio and calibrated score from the two losses and the homogeneity (and, in `extra`, the
    statistics beyond the paper)."""
    ratio = loss1 / max(loss2, L2_FLOOR)
    return Scores(loss1=loss1, loss2=loss2, ratio=ratio, homogeneity=h, score=ratio * h, **extra)


def batches_by_shape(
    crops: Sequence[np.ndarray], batch_size: int, max_pixels: int | None = None
) -> Iterable[list[int]]:
    """Indices grouped into batches whose images share one shape (so they stack), in order.

    A batch holds at most `batch_size` images and, with `max_pixels`, at most that many pixels
    (never fewer than one image): on a CPU, a batch beyond the cache is slower per image than
    a small one (docs/PERFORMANCE.md), so the bound is a pixel budget, not only a count.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be ≥ 1, got {batch_size}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, crop in enumerate(crops):
        groups.setdefault(crop.shape, []).append(i)
    for shape, indices in groups.items():
        size = batch_size
        if max_pixels:
            size = max(1, min(batch_size, max_pixels // (shape[0] * shape[1])))
        for start in range(0, len(indices), size):
            yield indices[start : start + size]


def pixel_budget(device: torch.device) -> int | None:
    """Default pixels per autoencoder call: 131 072 on CPU (8 images at 128²; measured best on
    2 cores at 64² and 128², docs/PERFORMANCE.md), unbounded on CUDA, where large batches fill
    the card."""
    return None if device.type == "cuda" else 131_072


def score_tiles(
    model: AutoencoderLike,
    tiles: Sequence[Sequence[np.ndarray]],
    batch_size: int = 16,
    max_pixels: int | None = None,
    homogeneities: Sequence[float] | None = None,
) -> list[Scores]:
    """Scores of images given as their tiles (each image's tiles share one shape; RGB uint8).
    Tiles of all images are batched together by shape (`batch_size` and `max_pixels` bound one
    autoencoder call in tiles and pixels); an image's statistics are the means over its tiles,
    and its H the mean of its tiles' H (computed here unless given)."""
    flat = [t for image_tiles in tiles for t in image_tiles]
    owner = [i for i, image_tiles in enumerate(tiles) for _ in image_tiles]
    sums = np.zeros((len(tiles), len(STATISTICS)), dtype=np.float64)
    for batch in batches_by_shape(flat, batch_size, max_pixels):
        stats = reconstruction_stats(model, torch.stack([to_tensor(flat[i]) for i in batch]))
        values = torch.stack([stats[k] for k in STATISTICS], dim=1).double().numpy()
        for j, i in enumerate(batch):
            sums[owner[i]] += values[j]
    results = []
    for i, image_tiles in enumerate(tiles):
        if not image_tiles:
            raise ValueError(f"image {i} has no tiles")
        mean = sums[i] / len(image_tiles)
        h = homogeneities[i] if homogeneities is not None else float(np.mean([homogeneity(t) for t in image_tiles]))
        extra = {k: float(v) for k, v in zip(STATISTICS[2:], mean[2:])}
        results.append(combine(float(mean[0]), float(mean[1]), h, **extra))
    return results


def score_crops(
    model: AutoencoderLike,
    crops: Sequence[np.ndarray],
    batch_size: int = 16,
    max_pixels: int | None = None,
    homogeneities: Sequence[float] | None = None,
) -> list[Scores]:
    """Scores for images already cropped for `model` (RGB uint8, one crop each), batched by
    shape. The crops' homogeneities are computed here unless given."""
    return score_tiles(model, [[c] for c in crops], batch_size, max_pixels, homogeneities)


def cut_tiles(image: np.ndarray, factor: int, tile: int | None, max_tiles: int | None = DEFAULT_MAX_TILES) -> list[np.ndarray]:
    """The pixels of `tile_boxes` (views into `image`, nothing copied)."""
    return [box.apply(image) for box in tile_boxes(image.shape[0], image.shape[1], factor, tile, max_tiles)]


def score_images(
    model: AutoencoderLike,
    images: Sequence[np.ndarray],
    batch_size: int = 16,
    tile: int | None = None,
    max_pixels: int | None = None,
    max_tiles: int | None = DEFAULT_MAX_TILES,
) -> list[Scores]:
    """AEDR scores of whole RGB uint8 images for one model (tile, batch, score). With
    `tile=None`, the whole aligned image is one tile."""
    tiles = [cut_tiles(im, model.spatial_factor, tile, max_tiles) for im in images]
    return score_tiles(model, tiles, batch_size, max_pixels)


def preprocessing_spec(spatial_factor: int, tile: int | None, weights_dtype: torch.dtype = torch.float32,
                       max_tiles: int | None = DEFAULT_MAX_TILES) -> dict[str, object]:
    """Everything a threshold depends on besides the weights (stored beside it). The weights'
    dtype is here because bf16 weights move scores by ~2 % relative (bench/gpu.py)."""
    return {
        "version": PREPROCESSING_VERSION,
        "crop": "aligned tiles, centred grid, no resampling; statistics are means over tiles",
        "spatial_factor": spatial_factor,
        "tile": tile,
        "max_tiles": max_tiles if tile is not None else 1,
        "pixels": "RGB uint8 -> [-1, 1]",
        "latents": "mode",
        "weights_dtype": str(weights_dtype).removeprefix("torch."),
        "loss_dtype": "float32",
        "gray": "opencv rgb2gray fixed point",
        "glcm": {"levels": GLCM_LEVELS, "distance": 1, "angle": 0, "symmetric": True},
    }
