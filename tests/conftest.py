"""Shared fixtures: tiny real diffusers autoencoders of each family, built on the CPU."""

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
}
FAMILY = {"kl": "kl", "kl16": "kl", "vq": "vq", "tiny": "tiny"}


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
