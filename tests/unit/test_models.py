"""Loading each autoencoder family through the real `from_pretrained` path, offline."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from tests.conftest import FAMILY, build_module, random_images
from worker.models import ModelNotFound, load_autoencoder, pick_device
from worker.scoring import score_images


def test_each_family_loads_from_a_local_directory_and_scores(saved_model):
    path, variant = saved_model
    model = load_autoencoder(str(path), device="cpu")
    assert model.kind == FAMILY[variant]
    assert model.name == path.name
    x = torch.zeros(1, 3, 32, 32)
    with torch.inference_mode():
        z = model.encode(x)
    assert z.shape[-1] == 32 // model.spatial_factor  # the factor read from config is the real one
    scores = score_images(model, random_images(2, 32, 32), batch_size=2)
    assert all(np.isfinite(s.score) and s.loss1 > 0 for s in scores)


def test_loads_the_vae_subfolder_of_a_pipeline_directory(tmp_path):
    pipeline = tmp_path / "pipeline"
    build_module("kl").save_pretrained(pipeline / "vae")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    model = load_autoencoder(str(pipeline), subfolder="vae", device="cpu")
    assert model.kind == "kl" and model.spatial_factor == 2


def test_weights_hash_identifies_exact_weights(tmp_path):
    build_module("kl", seed=0).save_pretrained(tmp_path / "a")
    build_module("kl", seed=0).save_pretrained(tmp_path / "b")
    build_module("kl", seed=1).save_pretrained(tmp_path / "c")
    a, b, c = (load_autoencoder(str(tmp_path / n), device="cpu") for n in "abc")
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    half = load_autoencoder(str(tmp_path / "a"), device="cpu", dtype="bf16")
    assert half.weights_sha256 == a.weights_sha256  # hashed before the dtype cast
    assert half.dtype == torch.bfloat16


def test_missing_directory_is_one_clear_line(tmp_path):
    with pytest.raises(ModelNotFound) as info:
        load_autoencoder(str(tmp_path / "nope" / "vae-dir"), device="cpu")
    message = str(info.value)
    assert "\n" not in message and "does not exist" in message


def test_directory_without_weights_names_what_is_missing(tmp_path):
    build_module("kl").save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelNotFound, match="weights could not be loaded"):
        load_autoencoder(str(tmp_path / "m"), device="cpu")
    with pytest.raises(ModelNotFound, match="no config.json"):
        load_autoencoder(str(tmp_path), device="cpu")


def test_uncached_hub_id_fails_fast_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.perf_counter()
    with pytest.raises(ModelNotFound, match="not in the local Hugging Face cache"):
        load_autoencoder("stabilityai/sd-vae-ft-mse", device="cpu")
    assert time.perf_counter() - started < 5


def test_unsupported_class_is_refused(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ModelNotFound, match="not a supported autoencoder"):
        load_autoencoder(str(tmp_path / "unet"), device="cpu")


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_compile_mode_compiles_what_the_scoring_path_calls(monkeypatch):
    """`scoring.compile` must reach `encode` and `decode`, which scoring calls (it keeps the
    latents), not only a round trip that scoring never calls. torch.compile is replaced by a
    recorder here, so no compiler is needed; the scores must not change."""
    from worker.models import from_module

    compiled: list[str] = []

    def fake_compile(fn, mode=None, dynamic=None):
        def run(*args):
            compiled.append(f"{fn.__name__}:{mode}")
            return fn(*args)
        return run

    images = random_images(4, 32, 32)
    eager = score_images(from_module(build_module("kl"), "kl"), images)
    monkeypatch.setattr(torch, "compile", fake_compile)
    model = from_module(build_module("kl"), "kl", compile_mode="default")
    scores = score_images(model, images)
    assert sorted(set(compiled)) == ["_decode_eager:default", "_encode_eager:default"]
    assert compiled.count("_encode_eager:default") == 2  # E(x) and E(x1)
    assert [s.score for s in scores] == pytest.approx([s.score for s in eager], rel=1e-6)
