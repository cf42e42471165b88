"""The scoring core against an independent float64 recomputation of METHOD.md."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.conftest import FAMILY, build_module, random_images
from worker.models import from_module
from worker.scoring import (
    L2_FLOOR,
    ImageTooSmall,
    combine,
    crop_box,
    gray_levels,
    homogeneity,
    reconstruction_losses,
    score_images,
)


def reference_homogeneity(image: np.ndarray) -> float:
    """GLCM homogeneity written out by hand in float64 (no scikit-image)."""
    rgb = image.astype(np.int64)
    gray = (4899 * rgb[..., 0] + 9617 * rgb[..., 1] + 1868 * rgb[..., 2] + 8192) >> 14
    q = gray // 8
    counts = np.zeros((32, 32), dtype=np.float64)
    np.add.at(counts, (q[:, :-1].ravel(), q[:, 1:].ravel()), 1)
    counts = counts + counts.T  # symmetric
    p = counts / counts.sum()
    i, j = np.indices(p.shape)
    return float(np.sum(p / (1.0 + (i - j) ** 2)))


VIDEO_KINDS = ("qwenimage", "qwenimage21", "wan")  # causal video VAEs: (B, C, T, H, W)


def reference_roundtrip(m: torch.nn.Module, kind: str, x: torch.Tensor) -> torch.Tensor:
    """D(E(x)) from the raw diffusers module, spelt out per family (not via worker.models):
    the Gaussian posterior's mean, VQ's pre-quantisation latents, DC-AE's latent; video VAEs
    see one frame; an RGBA VAE sees an opaque alpha channel and its alpha output is dropped."""
    if kind in VIDEO_KINDS:
        channels = m.config.get("in_channels", m.config.get("input_channels", 3)) // (m.config.get("patch_size") or 1) ** 2
        frame = torch.cat([x, torch.ones_like(x[:, :1])], dim=1) if channels == 4 else x
        z = m.encode(frame.unsqueeze(2)).latent_dist.mean
        return m.decode(z).sample[:, :3, 0]
    enc = m.encode(x)
    if kind == "dc":
        z = enc.latent
    elif kind in ("vq", "tiny"):
        z = enc.latents
    else:  # kl, flux2, hunyuanimage
        z = enc.latent_dist.mean
    return m.decode(z).sample


def reference_scores(module: torch.nn.Module, kind: str, image: np.ndarray, factor: int) -> tuple:
    """METHOD.md in float64, from the raw diffusers module, for a crop aligned by hand."""
    m = copy.deepcopy(module).double()
    h, w = image.shape[:2]
    hh, ww = h // factor * factor, w // factor * factor
    top, left = (h - hh) // 2 // factor * factor, (w - ww) // 2 // factor * factor
    crop = image[top : top + hh, left : left + ww]
    x = torch.from_numpy(crop.astype(np.float64) / 255.0).permute(2, 0, 1)[None] * 2 - 1

    with torch.no_grad():
        x1 = reference_roundtrip(m, kind, x)
        x2 = reference_roundtrip(m, kind, x1)
    l1 = float(((x1 - x) ** 2).mean())
    l2 = float(((x2 - x1) ** 2).mean())
    hom = reference_homogeneity(crop)
    return l1, l2, l1 / l2, hom, l1 / l2 * hom


@pytest.mark.parametrize("variant", list(FAMILY))
def test_scores_equal_float64_recomputation(variant):
    module = build_module(variant, seed=3)
    model = from_module(module, FAMILY[variant])
    images = random_images(3, 37, 45, seed=1)  # sides not multiples of any factor: crops apply
    got = score_images(model, images, batch_size=3)
    for image, scores in zip(images, got):
        want = reference_scores(module, FAMILY[variant], image, model.spatial_factor)
        have = (scores.loss1, scores.loss2, scores.ratio, scores.homogeneity, scores.score)
        np.testing.assert_allclose(have, want, rtol=1e-4)


def _batch_models():
    """Random models of every family, and the trained zoo. A randomly initialised
    AutoencoderTiny is left out: its output is almost constant, so L2 sits at fp32 rounding
    (~1e-8) and its ratio is noise; the trained tiny-f8 covers that family."""
    from worker.zoo import ZOO

    cases = [pytest.param(v, id=f"random-{v}") for v in FAMILY if v != "tiny"]
    cases += [pytest.param(m.name, id=f"zoo-{m.name}") for m in ZOO]
    return cases


@pytest.mark.parametrize("which", _batch_models())
def test_batch_equals_one_by_one(which):
    from worker.models import load_autoencoder
    from worker.zoo import zoo_model

    if which in FAMILY:
        model = from_module(build_module(which, seed=5), FAMILY[which])
    else:
        model = load_autoencoder(str(zoo_model(which).path), device="cpu")
    images = random_images(6, 32, 48, seed=2)
    batched = score_images(model, images, batch_size=6)
    single = [score_images(model, [im], batch_size=1)[0] for im in images]
    for b, s in zip(batched, single):
        np.testing.assert_allclose(
            [b.loss1, b.loss2, b.ratio, b.score], [s.loss1, s.loss2, s.ratio, s.score], rtol=1e-5
        )


def test_mixed_shapes_keep_input_order():
    model = from_module(build_module("kl", seed=1), "kl")
    small = random_images(2, 16, 16, seed=3)
    large = random_images(2, 40, 24, seed=4)
    mixed = [small[0], large[0], small[1], large[1]]
    got = score_images(model, mixed, batch_size=8)
    alone = [score_images(model, [im], batch_size=1)[0] for im in mixed]
    np.testing.assert_allclose([g.score for g in got], [a.score for a in alone], rtol=1e-5)


def test_half_precision_weights_still_give_fp32_losses():
    model = from_module(build_module("kl", seed=1), "kl", dtype="bf16")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    loss1, loss2 = reconstruction_losses(model, x)
    assert loss1.dtype == torch.float32 and loss2.dtype == torch.float32
    ref = from_module(build_module("kl", seed=1), "kl")
    ref1, _ = reconstruction_losses(ref, x)
    np.testing.assert_allclose(loss1.numpy(), ref1.numpy(), rtol=0.1)  # bf16 is close, not equal


def test_crop_box_is_aligned_and_never_resamples():
    box = crop_box(37, 45, 8)
    assert (box.height, box.width) == (32, 40)
    assert box.top % 8 == 0 and box.left % 8 == 0
    assert box.top + box.height <= 37 and box.left + box.width <= 45
    tiled = crop_box(300, 500, 8, tile=64)
    assert (tiled.height, tiled.width) == (64, 64)
    assert tiled.top % 8 == 0 and tiled.left % 8 == 0
    assert crop_box(40, 100, 8, tile=64).height == 40  # a side below the tile stays its size
    with pytest.raises(ImageTooSmall):
        crop_box(7, 100, 8)
    with pytest.raises(ValueError):
        crop_box(64, 64, 8, tile=60)


def test_gray_is_opencv_fixed_point():
    greys = np.stack([np.arange(256, dtype=np.uint8)] * 3, axis=-1)[None]
    # The three weights sum to 2^14, so equal R=G=B maps to itself: level = v // 8.
    np.testing.assert_array_equal(gray_levels(greys)[0], np.arange(256) // 8)
    # (0, 0, 250): the fixed point gives 29, a rounded float 0.114·250 = 28.5 → 28 (banker's)
    # or 29; OpenCV's rule is the integer one, and it is what we follow.
    rgb = np.array([[[0, 0, 250]]], dtype=np.uint8)
    assert gray_levels(rgb, levels=256)[0, 0] == 29
    assert int(np.round(0.299 * 0 + 0.587 * 0 + 0.114 * 250)) == 28


def test_homogeneity_equals_scikit_image_graycoprops():
    from skimage.feature import graycomatrix, graycoprops

    for image in random_images(4, 37, 53, seed=12):
        glcm = graycomatrix(gray_levels(image), distances=[1], angles=[0], levels=32, symmetric=True, normed=True)
        assert homogeneity(image) == pytest.approx(float(graycoprops(glcm, "homogeneity")[0, 0]), rel=1e-12)


def test_homogeneity_matches_hand_written_glcm():
    for image in random_images(3, 33, 29, seed=9):
        assert homogeneity(image) == pytest.approx(reference_homogeneity(image), rel=1e-12)
    flat = np.full((16, 16, 3), 77, dtype=np.uint8)
    assert homogeneity(flat) == pytest.approx(1.0)


def test_ratio_is_finite_when_second_loss_vanishes():
    s = combine(1e-3, 0.0, 0.5)
    assert s.ratio == pytest.approx(1e-3 / L2_FLOOR)
    assert np.isfinite(s.score) and s.score == pytest.approx(0.5 * s.ratio)


def test_batches_respect_the_pixel_budget_and_keep_every_index():
    from worker.scoring import batches_by_shape

    crops = [np.zeros((128, 128, 3), np.uint8)] * 10 + [np.zeros((64, 64, 3), np.uint8)] * 20
    batches = list(batches_by_shape(crops, batch_size=16, max_pixels=65_536))
    assert sorted(i for b in batches for i in b) == list(range(30))
    assert all(len(b) <= 4 for b in batches if b[0] < 10)  # 4 × 128² = 65 536
    assert max(len(b) for b in batches if b[0] >= 10) == 16  # 16 × 64² = 65 536
    huge = list(batches_by_shape([np.zeros((512, 512, 3), np.uint8)] * 3, batch_size=16, max_pixels=65_536))
    assert [len(b) for b in huge] == [1, 1, 1]  # never fewer than one image


@pytest.mark.parametrize("shape", [(3, 3, 17, 29), (8, 3, 64, 64), (1, 3, 1, 1), (2, 3, 2, 5)])
def test_the_highpass_energy_is_the_residual_from_a_replicate_padded_3x3_box_mean(shape):
    """The separable box sum against its definition (avg_pool2d), in both memory formats."""
    from worker.scoring import _highpass_energy

    d = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    box = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(d, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    expected = (d - box).pow(2).mean(dim=(1, 2, 3))
    for x in (d, d.contiguous(memory_format=torch.channels_last)):
        assert torch.allclose(_highpass_energy(x), expected, rtol=1e-5, atol=1e-8)
