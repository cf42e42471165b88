"""The mini model zoo: small autoencoders this project trains itself and ships.

Real SD/FLUX/VQ-Diffusion weights cannot be downloaded on the machines this project is built
and tested on, so tests, the demo and docs/ACCURACY.md use a zoo of tiny diffusers autoencoders
covering the three families the worker supports (AutoencoderKL with 4- and 16-channel latents and
two downsampling factors, VQModel, AutoencoderTiny). They are trained by `scripts/train_zoo.py`
on crops of the photographs that ship inside scikit-image, and their weights live in
`worker/zoo/models/<name>/` in diffusers layout, so the real `from_pretrained` path loads them.

This module only *describes* the zoo (architectures, data splits, where files live); it loads
nothing at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ZOO_DIR = Path(__file__).resolve().parent
MODELS_DIR = ZOO_DIR / "models"
CALIBRATIONS_DIR = ZOO_DIR / "calibrations"


@dataclass(frozen=True)
class ZooModel:
    """One zoo member: a diffusers class name and the config it is built with."""

    name: str
    kind: str  # "kl" | "vq" | "tiny"
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def path(self) -> Path:
        return MODELS_DIR / self.name

    @property
    def calibration_path(self) -> Path:
        return CALIBRATIONS_DIR / f"{self.name}.json"


_KL_COMMON: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "act_fn": "silu",
    "norm_num_groups": 8,
    "mid_block_add_attention": False,
    "sample_size": 32,
}

ZOO: tuple[ZooModel, ...] = (
    # SD1.5/2/XL-like: 4 latent channels (downsampling 4 here to stay tiny).
    ZooModel(
        "kl-f4c4",
        "kl",
        {
            **_KL_COMMON,
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [16, 32, 32],
            "latent_channels": 4,
        },
        seed=11,
    ),
    # SD3.5/FLUX-like: 16 latent channels.
    ZooModel(
        "kl-f4c16",
        "kl",
        {
            **_KL_COMMON,
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [16, 32, 32],
            "latent_channels": 16,
        },
        seed=12,
    ),
    # SD-like spatial factor 8.
    ZooModel(
        "kl-f8c4",
        "kl",
        {
            **_KL_COMMON,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [16, 32, 32, 32],
            "latent_channels": 4,
        },
        seed=13,
    ),
    # VQ-Diffusion / MoVQ-like: quantised latents.
    ZooModel(
        "vq-f4",
        "vq",
        {
            **_KL_COMMON,
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [16, 32, 32],
            "latent_channels": 4,
            "num_vq_embeddings": 256,
        },
        seed=14,
    ),
    # TAESD-like tiny autoencoder, spatial factor 8.
    ZooModel(
        "tiny-f8",
        "tiny",
        {
            "in_channels": 3,
            "out_channels": 3,
            "encoder_block_out_channels": [24, 24, 24, 24],
            "decoder_block_out_channels": [24, 24, 24, 24],
            "num_encoder_blocks": [1, 1, 1, 1],
            "num_decoder_blocks": [1, 1, 1, 1],
            "latent_channels": 4,
        },
        seed=15,
    ),
    # SANA-like DC-AE: deterministic latent, pixel-unshuffle shortcuts, linear attention in the
    # last level. Spatial factor 8, not SANA's 32: at 32×32 training crops and 64×64 images a
    # ×32 model has a 1×1 or 2×2 latent and cannot be a usable autoencoder.
    ZooModel(
        "dc-f8c8",
        "dc",
        {
            "in_channels": 3,
            "latent_channels": 8,
            "attention_head_dim": 8,
            "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"],
            "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"],
            "encoder_block_out_channels": [16, 32, 32, 32],
            "decoder_block_out_channels": [16, 32, 32, 32],
            "encoder_layers_per_block": [1, 1, 1, 1],
            "decoder_layers_per_block": [1, 1, 1, 1],
            "encoder_qkv_multiscales": [[], [], [], [5]],
            "decoder_qkv_multiscales": [[], [], [], [5]],
        },
        seed=16,
    ),
    # FLUX.2-like: AutoencoderKLFlux2 (latent batch-norm statistics fitted after training).
    ZooModel(
        "flux2-f8c16",
        "flux2",
        {
            **_KL_COMMON,
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [16, 32, 32, 32],
            "latent_channels": 16,
        },
        seed=17,
    ),
    # Qwen-Image-like causal video VAE scoring one-frame clips (latents_mean/std fitted after training).
    ZooModel(
        "qwen-f8c8",
        "qwenimage",
        {
            "base_dim": 8,
            "z_dim": 8,
            "dim_mult": [1, 2, 2, 2],
            "num_res_blocks": 1,
            "temperal_downsample": [False, False, False],
            "latents_mean": [0.0] * 8,
            "latents_std": [1.0] * 8,
        },
        seed=18,
    ),
)


def zoo_model(name: str) -> ZooModel:
    for member in ZOO:
        if member.name == name:
            return member
    raise KeyError(f"no zoo model named {name!r}; known: {', '.join(m.name for m in ZOO)}")


# Photographs shipped with scikit-image (no download). Training uses one group; the "real photo"
# negatives and the content that zoo "generators" start from use the other, so no test image was
# seen in training.
TRAIN_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
    "camera", "coins", "grass", "brick", "page", "moon",
)
HELDOUT_PHOTOS = ("stereo_motorcycle", "hubble_deep_field", "retina", "clock", "gravel", "text")


def load_photo(name: str) -> np.ndarray:
    """One scikit-image photograph as an RGB uint8 array (H, W, 3)."""
    from skimage import data  # deferred: scikit-image's data module is slow to import

    image = getattr(data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
        image = image[0]
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def random_crops(
    photos: list[np.ndarray], n: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """`n` random `size`×`size` crops (uint8, N×H×W×3) drawn uniformly over the photos."""
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        y = rng.integers(photo.shape[0] - size + 1)
        x = rng.integers(photo.shape[1] - size + 1)
        out[i] = photo[y : y + size, x : x + size]
    return out


def generate_images(model, sources: np.ndarray, rng: np.random.Generator, noise: float = 0.25) -> np.ndarray:
    """A zoo model's "generated" images: decoder outputs of perturbed latents of real crops.

    A latent diffusion model's output is D(z) for some latent z its sampler produced; here z is
    the encoding of a real crop plus Gaussian noise of `noise` × the latent's own std, so the
    content is varied but every pixel comes out of the decoder. Returned as 8-bit RGB, as a real
    generator's PNG would be. `model` is a `worker.models.Autoencoder`.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(sources)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.inference_mode():
        z = model.encode(x.to(model.device))
        eps = torch.from_numpy(rng.standard_normal(tuple(z.shape)).astype(np.float32)).to(z)
        z = z + noise * z.std(dim=(1, 2, 3), keepdim=True) * eps
        out = model.decode(z).float().clamp(-1, 1)
    pixels = torch.round((out + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(pixels.cpu().numpy())
