"""Shared fixtures: tiny real diffusers autoencoders of each family, built on the CPU.

One tiny config per supported family (worker.models.FAMILIES), built from config with random
weights, as diffusers' own tests do; latent statistics are not the defaults, so a test that
the pipeline's normalisation cancels cannot pass by accident."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

TINY_CONFIGS = {
    "kl": {
        "block_out_channels": [8, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "layers_per_block": 1,
        "mid_block_add_attention": False,
    },
    "kl16": {
        "block_out_channels": [8, 16, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "latent_channels": 16,
        "norm_num_groups": 4,
        "layers_per_block": 1,
        "mid_block_add_attention": False,
    },
    "vq": {
        "block_out_channels": [8, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "latent_channels": 3,
        "norm_num_groups": 4,
        "layers_per_block": 1,
        "num_vq_embeddings": 32,
        "mid_block_add_attention": False,
    },
    "tiny": {
        "encoder_block_out_channels": [8, 8, 8],
        "decoder_block_out_channels": [8, 8, 8],
        "num_encoder_blocks": [1, 1, 1],
        "num_decoder_blocks": [1, 1, 1],
        "latent_channels": 4,
    },
    # FLUX.2: AutoencoderKL-like, plus the latent batch-norm the pipeline normalises with.
    "flux2": {
        "block_out_channels": [8, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "layers_per_block": 1,
        "mid_block_add_attention": False,
        "sample_size": 32,
    },
    # Qwen-Image (the Wan 2.1 architecture): causal 3-D convolutions, 5-D input.
    "qwenimage": {
        "base_dim": 8,
        "z_dim": 4,
        "dim_mult": [1, 2],
        "num_res_blocks": 1,
        "temperal_downsample": [False],
        "latents_mean": [0.1, -0.2, 0.3, 0.0],
        "latents_std": [1.5, 0.7, 2.0, 1.1],
    },
    # Qwen-Image 2.x: residual blocks, RGBA input (its default in_channels = 4).
    "qwenimage21": {
        "base_dim": 8,
        "decoder_base_dim": 8,
        "z_dim": 4,
        "dim_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "temperal_downsample": [False, False],
        "latents_mean": [0.1, -0.2, 0.3, 0.0],
        "latents_std": [1.5, 0.7, 2.0, 1.1],
        "scale_factor_spatial": 4,
    },
    # Wan 2.2-style: 2×2 pixel patchify before the encoder (in_channels 12 = 3·2²).
    "wan": {
        "base_dim": 8,
        "z_dim": 4,
        "dim_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "temperal_downsample": [False, False],
        "latents_mean": [0.1, -0.2, 0.3, 0.0],
        "latents_std": [1.5, 0.7, 2.0, 1.1],
        "in_channels": 12,
        "out_channels": 12,
        "patch_size": 2,
        "is_residual": True,
        "scale_factor_spatial": 8,
    },
    # SANA's DC-AE: deterministic latent, pixel-unshuffle downsampling, linear attention.
    "dc": {
        "latent_channels": 4,
        "attention_head_dim": 4,
        "encoder_block_types": ["ResBlock", "EfficientViTBlock"],
        "decoder_block_types": ["ResBlock", "EfficientViTBlock"],
        "encoder_block_out_channels": [8, 16],
        "decoder_block_out_channels": [8, 16],
        "encoder_layers_per_block": [1, 1],
        "decoder_layers_per_block": [1, 1],
        "encoder_qkv_multiscales": [[], [5]],
        "decoder_qkv_multiscales": [[], [5]],
        "scaling_factor": 0.37,
    },
    # HunyuanImage 2.1: its own 2-D VAE (GroupNorm of 32 groups: channels are multiples of 32).
    "hunyuanimage": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [32, 32],
        "layers_per_block": 1,
        "spatial_compression_ratio": 2,
        "sample_size": 32,
        "scaling_factor": 0.75,
    },
}
FAMILY = {
    "kl": "kl", "kl16": "kl", "vq": "vq", "tiny": "tiny", "flux2": "flux2", "qwenimage": "qwenimage",
    "qwenimage21": "qwenimage21", "wan": "wan", "dc": "dc", "hunyuanimage": "hunyuanimage",
}


def build_module(variant: str, seed: int = 0) -> torch.nn.Module:
    from worker.models import autoencoder_class

    torch.manual_seed(seed)
    return autoencoder_class(FAMILY[variant])(**TINY_CONFIGS[variant]).eval()


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(params=list(TINY_CONFIGS))
def variant(request) -> str:
    return request.param


@pytest.fixture
def saved_model(tmp_path, variant):
    """A tiny autoencoder of each family saved in diffusers layout; yields (dir, variant)."""
    path = tmp_path / f"ae-{variant}"
    build_module(variant).save_pretrained(path)
    return path, variant


def random_images(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth-ish RGB uint8 test images (noise + gradients) of one size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for _ in range(n):
        base = (np.sin(xx / rng.uniform(3, 9)) + np.cos(yy / rng.uniform(3, 9)))[..., None] * 60 + 128
        noise = rng.normal(0, 20, (height, width, 3))
        out.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return out
