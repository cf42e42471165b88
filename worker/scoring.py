"""The AEDR scoring core: pixels in, numbers out (../shared/METHOD.md, the "ours" variant).

For one watchlist autoencoder (E, D): x1 = D(E(x)), x2 = D(E(x1)); L1 = MSE(x, x1),
L2 = MSE(x1, x2); ratio t = L1/L2; calibrated score t' = t·H with H the GLCM homogeneity of the
scored pixels. An image is attributed to the model when t' is below the model's threshold.

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
PREPROCESSING_VERSION = 2  # 2: weights_dtype added


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
    """AEDR numbers for one (image, model)."""

    loss1: float
    loss2: float
    ratio: float
    homogeneity: float
    score: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


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


@torch.inference_mode()
def reconstruction_losses(model: AutoencoderLike, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (L1, L2) in fp32 for a batch x (N, 3, H, W) in [−1, 1]."""
    if model.device.type == "cuda":  # pinned host memory: the copy overlaps with queued work
        x = x.pin_memory().to(model.device, non_blocking=True)
    else:
        x = x.to(model.device)
    x1 = model.reconstruct(x)
    x2 = model.reconstruct(x1)
    x, x1, x2 = x.float(), x1.float(), x2.float()
    loss1 = (x1 - x).pow(2).mean(dim=(1, 2, 3))
    loss2 = (x2 - x1).pow(2).mean(dim=(1, 2, 3))
    return loss1.cpu(), loss2.cpu()


def combine(loss1: float, loss2: float, h: float) -> Scores:
    """Ratio and calibrated score from the two losses and the homogeneity."""
    ratio = loss1 / max(loss2, L2_FLOOR)
    return Scores(loss1=loss1, loss2=loss2, ratio=ratio, homogeneity=h, score=ratio * h)


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


def score_crops(
    model: AutoencoderLike,
    crops: Sequence[np.ndarray],
    batch_size: int = 16,
    max_pixels: int | None = None,
    homogeneities: Sequence[float] | None = None,
) -> list[Scores]:
    """Scores for images already cropped for `model` (RGB uint8), batched by shape. The
    crops' homogeneities are computed here unless given (the worker computes them earlier)."""
    results: list[Scores | None] = [None] * len(crops)
    for batch in batches_by_shape(crops, batch_size, max_pixels):
        x = torch.stack([to_tensor(crops[i]) for i in batch])
        loss1, loss2 = reconstruction_losses(model, x)
        for j, i in enumerate(batch):
            h = homogeneities[i] if homogeneities is not None else homogeneity(crops[i])
            results[i] = combine(float(loss1[j]), float(loss2[j]), h)
    return results  # type: ignore[return-value]


def score_images(
    model: AutoencoderLike,
    images: Sequence[np.ndarray],
    batch_size: int = 16,
    tile: int | None = None,
    max_pixels: int | None = None,
) -> list[Scores]:
    """AEDR scores of whole RGB uint8 images for one model (crop, batch, score)."""
    crops = [crop_box(im.shape[0], im.shape[1], model.spatial_factor, tile).apply(im) for im in images]
    return score_crops(model, crops, batch_size, max_pixels)


def preprocessing_spec(spatial_factor: int, tile: int | None, weights_dtype: torch.dtype = torch.float32) -> dict[str, object]:
    """Everything a threshold depends on besides the weights (stored beside it). The weights'
    dtype is here because bf16 weights move scores by ~2 % relative (bench/gpu.py)."""
    return {
        "version": PREPROCESSING_VERSION,
        "crop": "centre, aligned to spatial factor, no resampling",
        "spatial_factor": spatial_factor,
        "tile": tile,
        "pixels": "RGB uint8 -> [-1, 1]",
        "latents": "mode",
        "weights_dtype": str(weights_dtype).removeprefix("torch."),
        "loss_dtype": "float32",
        "gray": "opencv rgb2gray fixed point",
        "glcm": {"levels": GLCM_LEVELS, "distance": 1, "angle": 0, "symmetric": True},
    }
