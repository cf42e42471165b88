"""The mini model zoo: small autoencoders this project trains itself and ships.

Real SD/FLUX/VQ-Diffusion weights cannot be downloaded on the machines this project is built
and tested on, so tests, the demo and docs/ACCURACY.md use a zoo of tiny diffusers autoencoders
covering the three families the worker supports (AutoencoderKL with 4- and 16-channel latents and
two downsampling factors, VQModel, AutoencoderTiny). They are trained by `scripts/train_zoo.py`
on crops of the photographs that ship inside scikit-image, and their weights live in
`worker/zoo/models/<name>/` in diffusers layout, so the real `from_pretrained` path loads them.

This module only *describes* the zoo (architectures, data splits, where files live); it loads
nothing at import time. Images made from it are `worker.corpus`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
