"""Every autoencoder family of worker.models.FAMILIES, the diffusers way: tiny random-weight
models built from config, saved with `save_pretrained` and loaded through the real
`from_pretrained` path (tests/conftest.py TINY_CONFIGS has one per family).

What is checked per family: the spatial factor read from the config is the real latent/pixel
ratio; the round trip keeps the image layout; it is deterministic and batch-independent; and
x1 = D(E(x)) equals the reconstruction the family's own pipeline makes (latent normalisation and
its inverse included), computed here from the raw module as the pipeline code does it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import FAMILY, TINY_CONFIGS, build_module, random_images
from worker.calibration import Calibration, CalibrationError, preprocessing_sha256
from worker.config import AUTOENCODER_KINDS
from worker.models import FAMILIES, KINDS, ModelNotFound, autoencoder_class, from_module, load_autoencoder
from worker.scoring import preprocessing_spec

VARIANTS = list(TINY_CONFIGS)


def saved(tmp_path, variant: str, seed: int = 0, module: torch.nn.Module | None = None):
    path = tmp_path / f"ae-{variant}-{seed}"
    (module if module is not None else build_module(variant, seed)).save_pretrained(path)
    return path


def images_tensor(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    arrays = random_images(n, height, width, seed)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_the_family_table_is_the_one_the_settings_and_cli_accept():
    assert KINDS == AUTOENCODER_KINDS
    assert {FAMILY[v] for v in VARIANTS} == set(KINDS)  # a tiny test config for every family
    import diffusers

    for fam in FAMILIES:
        assert getattr(diffusers, fam.class_name).__name__ == fam.class_name


@pytest.mark.parametrize("variant", VARIANTS)
def test_loads_from_pretrained_with_the_real_spatial_factor(tmp_path, variant):
    model = load_autoencoder(str(saved(tmp_path, variant)), device="cpu")
    assert model.kind == FAMILY[variant]
    f = model.spatial_factor
    x = images_tensor(2, 4 * f, 6 * f)
    with torch.inference_mode():
        z = model.encode(x)
        x1 = model.reconstruct(x)
    assert z.dim() == 4 and z.shape[0] == 2
    assert (x.shape[-2] // z.shape[-2], x.shape[-1] // z.shape[-1]) == (f, f)  # config factor = real ratio
    assert (z.shape[-2] * f, z.shape[-1] * f) == tuple(x.shape[-2:])
    assert x1.shape == x.shape and x1.dtype == torch.float32


def test_spatial_factors_of_the_tiny_configs_are_the_expected_ones():
    """Read from each family's own config keys, so a wrong key would show here."""
    factors = {v: from_module(build_module(v), FAMILY[v]).spatial_factor for v in VARIANTS}
    assert factors == {"kl": 2, "kl16": 4, "vq": 2, "tiny": 4, "flux2": 2, "qwenimage": 2,
                       "qwenimage21": 4, "wan": 8, "dc": 2, "hunyuanimage": 2}


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_is_deterministic_and_survives_save_and_load(tmp_path, variant):
    path = saved(tmp_path, variant, seed=2)
    a = load_autoencoder(str(path), device="cpu")
    b = load_autoencoder(str(path), device="cpu")
    assert a.weights_sha256 == b.weights_sha256 == from_module(build_module(variant, 2), FAMILY[variant]).weights_sha256
    x = images_tensor(2, 32, 32, seed=3)
    with torch.inference_mode():
        assert torch.equal(a.encode(x), a.encode(x))
        first = a.reconstruct(x)
        assert torch.equal(first, a.reconstruct(x))
        assert torch.equal(first, b.reconstruct(x))


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_equals_one_by_one(variant):
    model = from_module(build_module(variant, seed=4), FAMILY[variant])
    x = images_tensor(3, 32, 48, seed=5)
    with torch.inference_mode():
        batched = model.reconstruct(x)
        single = torch.cat([model.reconstruct(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- pipeline equivalence
# Each function is what that family's diffusers 0.42.1 pipeline does between pixels and its
# diffusion latent and back, from the raw module (the pipeline files named in each docstring).


def _kl_pipeline(m, x):
    """StableDiffusion/SDXL/SD3/FLUX.1: latents = (mode − shift)·scale; decode(latents/scale + shift)."""
    scale, shift = m.config.scaling_factor, m.config.shift_factor or 0.0
    latents = (m.encode(x).latent_dist.mode() - shift) * scale
    return m.decode(latents / scale + shift).sample


def _flux2_pipeline(m, x):
    """pipeline_flux2.py: `_encode_vae_image` (argmax latent, 2×2 patchify, batch-norm running
    statistics) and the end of `__call__` (the inverse, unpatchify, decode)."""
    z = m.encode(x).latent_dist.mode()
    b, c, h, w = z.shape
    p = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
    mean = m.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(m.bn.running_var.view(1, -1, 1, 1) + m.config.batch_norm_eps)
    latents = (p - mean) / std
    p = latents * std + mean
    z = p.reshape(b, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)
    return m.decode(z).sample


def _video_pipeline(m, x):
    """pipeline_qwenimage_img2img.py / pipeline_wan.py / pipeline_qwenimage21.py: one frame
    (RGBA with opaque alpha for 4-channel VAEs), (z − latents_mean)·(1/latents_std), and back;
    the image is frame 0 of the decoded video."""
    channels = m.config.get("in_channels", m.config.get("input_channels", 3)) // (m.config.get("patch_size") or 1) ** 2
    frame = torch.cat([x, torch.ones_like(x[:, :1])], dim=1) if channels == 4 else x
    z = m.encode(frame.unsqueeze(2)).latent_dist.mode()
    mean = torch.tensor(m.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(m.config.latents_std).view(1, -1, 1, 1, 1)
    latents = (z - mean) * inv_std
    return m.decode(latents / inv_std + mean).sample[:, :3, 0]


def _scaled_pipeline(latent):
    """SANA (pipeline_sana.py, DC-AE `.latent`), HunyuanImage 2.1 (pipeline_hunyuanimage.py) and
    TAESD: latents = z·scaling_factor; decode(latents/scaling_factor)."""

    def run(m, x):
        enc = m.encode(x)
        z = enc.latent if latent == "latent" else enc.latents if latent == "latents" else enc.latent_dist.mode()
        latents = z * m.config.scaling_factor
        return m.decode(latents / m.config.scaling_factor).sample

    return run


def _vq_diffusion_pipeline(m, x):
    """VQ-Diffusion decodes codebook vectors with `force_not_quantize=True`: the same as
    quantising the encoder's latents and decoding them (what AEDR's reference does)."""
    quantised = m.quantize(m.encode(x).latents)[0]
    return m.decode(quantised, force_not_quantize=True).sample


PIPELINES = {
    "kl": _kl_pipeline, "kl16": _kl_pipeline, "flux2": _flux2_pipeline, "qwenimage": _video_pipeline,
    "qwenimage21": _video_pipeline, "wan": _video_pipeline, "dc": _scaled_pipeline("latent"),
    "hunyuanimage": _scaled_pipeline("mode"), "tiny": _scaled_pipeline("latents"), "vq": _vq_diffusion_pipeline,
}


def _with_nontrivial_statistics(variant: str, module: torch.nn.Module) -> torch.nn.Module:
    """FLUX.2's batch-norm statistics are weights (buffers): give them values that matter."""
    if variant == "flux2":
        g = torch.Generator().manual_seed(0)
        module.bn.running_mean.copy_(torch.rand(module.bn.running_mean.shape, generator=g) * 2 - 1)
        module.bn.running_var.copy_(torch.rand(module.bn.running_var.shape, generator=g) * 3 + 0.2)
    return module


@pytest.mark.parametrize("variant", VARIANTS)
def test_reconstruction_is_the_pipelines_own(tmp_path, variant):
    """The pipeline's latent normalisation and its inverse cancel: x1 equals the pipeline's
    round trip to float rounding. And the normalisation is not the identity here (latent
    statistics and scaling factors of the tiny configs are not 0/1), so skipping the inverse
    would move the result far beyond that tolerance."""
    module = _with_nontrivial_statistics(variant, build_module(variant, seed=6))
    model = load_autoencoder(str(saved(tmp_path, variant, module=module)), device="cpu")
    raw = model.module
    x = images_tensor(2, 32, 32, seed=7)
    with torch.inference_mode():
        ours = model.reconstruct(x)
        theirs = PIPELINES[variant](raw, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["flux2", "qwenimage", "wan", "dc", "hunyuanimage", "kl"])
def test_the_normalisation_matters_so_the_equivalence_test_can_fail(variant):
    """Decoding the *normalised* latent (forgetting the inverse) gives another image."""
    module = _with_nontrivial_statistics(variant, build_module(variant, seed=6))
    model = from_module(module, FAMILY[variant])
    x = images_tensor(1, 32, 32, seed=7)
    with torch.inference_mode():
        z = model.encode(x)
        if variant == "flux2":
            mean = module.bn.running_mean.view(1, -1, 1, 1).mean()
            wrong = (z - mean) / torch.sqrt(module.bn.running_var.mean())
        elif variant in ("qwenimage", "wan"):
            mean = torch.tensor(module.config.latents_mean).view(1, -1, 1, 1)
            wrong = (z - mean) / torch.tensor(module.config.latents_std).view(1, -1, 1, 1)
        else:
            wrong = z * module.config.scaling_factor
        assert (model.decode(wrong) - model.decode(z)).abs().max() > 1e-3


def test_rgba_family_sees_an_opaque_alpha():
    model = from_module(build_module("qwenimage21"), "qwenimage21")
    seen = []
    handle = model.module.encoder.register_forward_pre_hook(lambda mod, args, kw=None: seen.append(args[0].clone()))
    with torch.inference_mode():
        model.encode(images_tensor(1, 16, 16))
    handle.remove()
    assert seen[0].shape[1] == 4 and torch.all(seen[0][:, 3] == 1.0)


# ---------------------------------------------------------------- finding and refusing models


@pytest.mark.parametrize("class_name", ["AutoencoderKLCogVideoX", "AutoencoderOobleck", "UNet2DModel"])
def test_a_class_the_adapter_does_not_know_is_one_line_that_names_it(tmp_path, class_name):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"_class_name": class_name}))
    with pytest.raises(ModelNotFound) as info:
        load_autoencoder(str(tmp_path / "m"), device="cpu")
    message = str(info.value)
    assert "\n" not in message and repr(class_name) in message
    for fam in FAMILIES:
        assert f"{fam.class_name} ({fam.kind})" in message


def test_an_unknown_forced_kind_is_refused(tmp_path):
    with pytest.raises(ModelNotFound, match="unknown kind 'sdxl'"):
        load_autoencoder(str(saved(tmp_path, "kl")), kind="sdxl", device="cpu")


@pytest.mark.parametrize("variant", ["flux2", "qwenimage", "dc", "hunyuanimage"])
def test_pipeline_subfolder_and_cached_hub_id_detect_the_family(tmp_path, monkeypatch, variant):
    pipeline = tmp_path / "pipeline"
    build_module(variant, seed=8).save_pretrained(pipeline / "vae")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "SomePipeline", "vae": ["diffusers", "x"]}))
    local = load_autoencoder(str(pipeline), subfolder="vae", device="cpu")
    assert local.kind == FAMILY[variant]

    # The Hugging Face cache layout: models--org--name/snapshots/<commit>/vae, refs/main.
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-pipe"
    commit = "0123456789abcdef0123456789abcdef01234567"
    build_module(variant, seed=8).save_pretrained(repo / "snapshots" / commit / "vae")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read per call
    cached = load_autoencoder("acme/tiny-pipe", subfolder="vae", device="cpu")
    assert cached.kind == FAMILY[variant] and cached.source == "acme/tiny-pipe"
    assert cached.weights_sha256 == local.weights_sha256


# ---------------------------------------------------------------- calibrations and families


def test_a_calibration_is_refused_for_another_family_even_with_equal_weights_hash():
    pre = preprocessing_spec(8, None)
    cal = Calibration.fit("m", "ab" * 32, pre, np.linspace(1, 2, 20), family="dc")
    assert cal.family == "dc" and json.loads(cal.to_json())["family"] == "dc"
    cal.check_matches("ab" * 32, pre, "dc")
    cal.check_matches("ab" * 32, pre)  # callers that do not know the family
    with pytest.raises(CalibrationError, match="fitted on a dc autoencoder, but the loaded model is a flux2"):
        cal.check_matches("ab" * 32, pre, "flux2")
    with pytest.raises(CalibrationError, match="recalibrate"):
        cal.check_matches("cd" * 32, pre, "dc")


def test_shipped_calibrations_load_and_a_record_from_before_the_family_field_still_does(tmp_path):
    """Every shipped record names its family and matches its model; a record written before the
    `family` field (none in it) still loads, and its preprocessing hash is today's."""
    from worker.zoo import ZOO

    for member in ZOO:
        cal = Calibration.load(member.calibration_path)
        model = load_autoencoder(str(member.path), device="cpu")
        spec = preprocessing_spec(model.spatial_factor, cal.preprocessing.get("tile"), model.dtype)
        assert cal.preprocessing_sha256 == preprocessing_sha256(spec)
        cal.check_matches(model.weights_sha256, spec, model.kind)
        assert cal.family == member.kind
        record = json.loads(member.calibration_path.read_text())
        del record["family"]
        older = tmp_path / f"{member.name}.json"
        older.write_text(json.dumps(record))
        old = Calibration.load(older)
        assert old.family == "" and old.threshold == cal.threshold
        old.check_matches(model.weights_sha256, spec, model.kind)


def test_the_zoo_has_members_of_the_new_families_through_the_real_loading_path():
    from worker.corpus import real_images
    from worker.zoo import ZOO

    assert {"dc", "flux2", "qwenimage"} <= {m.kind for m in ZOO}
    crops = real_images(8, 64, seed=0)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1  # photographs no member trained on
    for member in ZOO:
        config = json.loads((member.path / "config.json").read_text())
        assert autoencoder_class(member.kind).__name__ == config["_class_name"]
        assert (member.path / "diffusion_pytorch_model.safetensors").stat().st_size < 1.6e6  # small, committed
        model = load_autoencoder(str(member.path), device="cpu")
        assert model.kind == member.kind
        with torch.inference_mode():
            mse = float(((model.reconstruct(x) - x) ** 2).mean())
        assert mse < 0.05  # a trained autoencoder, not random weights (those give ~0.3)



def test_the_watchlist_kind_key_takes_every_family_and_refuses_others(tmp_path):
    from worker.config import ConfigError, load_settings

    def settings(kind: str):
        path = tmp_path / f"{kind}.toml"
        path.write_text(f'[[watchlist]]\nname = "m"\nmodel = "/models/m"\ncalibration = "c.json"\nkind = "{kind}"\n')
        return load_settings(path, env={})

    assert [settings(kind).watchlist[0].kind for kind in KINDS] == list(KINDS)
    with pytest.raises(ConfigError, match=r"watchlist\[0\].kind: unknown family 'sdxl'; expected one of kl, vq"):
        settings("sdxl")
