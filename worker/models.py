"""The model boundary: the only place that loads autoencoder weights or picks a device.

diffusers' autoencoder families differ in what `encode` returns (a posterior `.latent_dist`, VQ
pre-quantisation `.latents`, DC-AE's deterministic `.latent`), in the input layout (the video
VAEs of Qwen-Image and Wan take (B, C, T, H, W); an image is one frame), in how the spatial
factor is spelt in the config, and in the latent normalisation their pipelines apply. `FAMILIES`
is one table that says all of that per diffusers class, and `Autoencoder` applies it, so the
scoring core sees one shape: `encode(x) → z`, `decode(z) → x̂`, images (B, 3, H, W) in [−1, 1].

Why no latent normalisation is applied: every supported pipeline maps the VAE's latent z to its
diffusion latent by an invertible affine map (SD/SDXL/FLUX.1/SD3: `(z − shift)·scale`; FLUX.2:
2×2 patchify, then the VAE's batch-norm running statistics `(p − μ)/√(σ² + ε)`; Qwen-Image and
Wan: `(z − latents_mean)/latents_std` per channel; SANA and HunyuanImage: `z·scaling_factor`) and
applies its inverse before `decode`. In a round trip D(E(x)) the map and its inverse cancel, so
x1 is exactly the reconstruction that pipeline makes of x (up to float rounding, ~1e-7 relative);
tests/unit/test_families.py proves it per family against the pipeline-style computation. The
value range is [−1, 1] for every family (diffusers' `VaeImageProcessor` normalises to it;
`AutoencoderTiny` maps to its own [0, 1] inside `encode`/`decode`).

Loading is offline-safe: a local directory (diffusers layout, optionally a `subfolder` such as
`vae` of a whole pipeline) or a hub id resolved from the local cache only. Nothing here reaches
the network; a missing or unsupported model is a `ModelNotFound` with one line that says what
to do.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch

from .errors import AedrError

Kind = Literal["kl", "vq", "tiny", "flux2", "qwenimage", "qwenimage21", "wan", "dc", "hunyuanimage"]
DType = Literal["fp32", "fp16", "bf16"]

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def _levels(key: str, default: tuple) -> Callable[[Mapping[str, Any]], int]:
    """Factor 2^(n − 1) for an architecture with n resolution levels listed under `key`."""
    return lambda config: 2 ** (len(config.get(key) or default) - 1)


def _video_factor(config: Mapping[str, Any]) -> int:
    """Qwen-Image / Wan: one spatial halving per entry of `temperal_downsample`, times the
    optional pixel patchify of Wan 2.2-style VAEs."""
    return 2 ** len(config.get("temperal_downsample") or (False, True, True)) * int(config.get("patch_size") or 1)


def _hunyuan_factor(config: Mapping[str, Any]) -> int:
    """HunyuanImage: downsampling stops at `spatial_compression_ratio` or at the last level."""
    ratio = int(config["spatial_compression_ratio"])
    levels = len(config["block_out_channels"]) - 1
    return 2 ** min(ratio.bit_length() - 1, levels)


@dataclass(frozen=True)
class Family:
    """One row of the family table: how a diffusers class becomes encode/decode of images."""

    kind: str  # the short name used by --kind, the watchlist's `kind` and calibration records
    class_name: str  # diffusers class, as in config.json's `_class_name`
    latent: Literal["mode", "latents", "latent"]  # posterior mode, or the encoder's own tensor
    factor: Callable[[Mapping[str, Any]], int]  # pixels per latent cell, from the config
    generators: str  # who ships this family (for readers of the table; the README lists the same)
    frames: bool = False  # video VAE: (B, C, T, H, W) in and out, an image is T = 1
    channels_last: bool = True  # 4-D NHWC pays on CPU; 5-D video weights cannot take it


FAMILIES: tuple[Family, ...] = (
    Family("kl", "AutoencoderKL", "mode", _levels("block_out_channels", (64,)),
           "SD 1.5/2/XL/3.5, FLUX.1, Z-Image, HiDream"),
    Family("vq", "VQModel", "latents", _levels("block_out_channels", (64,)),
           "VQ-Diffusion, Kandinsky 2.x (MoVQ)"),
    Family("tiny", "AutoencoderTiny", "latents", _levels("encoder_block_out_channels", (64,) * 4),
           "TAESD, TAESDXL, TAESD3, TAEF1"),
    Family("flux2", "AutoencoderKLFlux2", "mode", _levels("block_out_channels", (128, 256, 512, 512)),
           "FLUX.2"),
    Family("qwenimage", "AutoencoderKLQwenImage", "mode", _video_factor, "Qwen-Image",
           frames=True, channels_last=False),
    Family("qwenimage21", "AutoencoderKLQwenImage21", "mode", _video_factor, "Qwen-Image 2.x",
           frames=True, channels_last=False),
    Family("wan", "AutoencoderKLWan", "mode", _video_factor, "Wan 2.1/2.2 (used for images)",
           frames=True, channels_last=False),
    Family("dc", "AutoencoderDC", "latent", _levels("encoder_block_out_channels", (128,) * 6),
           "SANA (DC-AE)"),
    Family("hunyuanimage", "AutoencoderKLHunyuanImage", "mode", _hunyuan_factor, "HunyuanImage 2.1"),
)
_BY_KIND: dict[str, Family] = {f.kind: f for f in FAMILIES}
_BY_CLASS: dict[str, Family] = {f.class_name: f for f in FAMILIES}
KINDS: tuple[str, ...] = tuple(_BY_KIND)


class ModelNotFound(AedrError):
    """The named autoencoder cannot be found or used locally; `str()` is a one-line instruction."""


def supported_families() -> str:
    """One line naming every supported family: `AutoencoderKL (kl), VQModel (vq), …`."""
    return ", ".join(f"{f.class_name} ({f.kind})" for f in FAMILIES)


def family(kind: str) -> Family:
    """The family row of a kind; `ValueError` naming the known kinds otherwise."""
    try:
        return _BY_KIND[kind]
    except KeyError:
        raise ValueError(f"unknown autoencoder kind {kind!r}; expected one of {', '.join(KINDS)}") from None


def family_of_class(class_name: str) -> Family | None:
    """The family of a config's `_class_name`, or None when the adapter does not know it."""
    return _BY_CLASS.get(class_name)


def autoencoder_class(kind: str) -> type[torch.nn.Module]:
    """The diffusers class of a family (imported lazily: diffusers is slow to import)."""
    import diffusers

    return getattr(diffusers, family(kind).class_name)


def spatial_factor_of(kind: str, config: Mapping[str, Any]) -> int:
    """Downsampling factor between pixels and latents, from a diffusers config."""
    return family(kind).factor(config)


def image_channels(kind: str, config: Mapping[str, Any]) -> int:
    """Channels of the images the VAE takes: 3 (RGB) or 4 (RGBA: Qwen-Image 2.x, Qwen-Image-
    Layered). A Wan 2.2-style video VAE patchifies pixels first and lists `in_channels` after it
    (12 = 3·2²); FLUX.2's `patch_size` is the pipeline's latent patchify and changes nothing here."""
    channels = int(config.get("in_channels", config.get("input_channels", 3)))
    if family(kind).frames:
        channels //= int(config.get("patch_size") or 1) ** 2
    return channels


class DeviceNotAvailable(AedrError):
    """The requested device is not a device, or not on this machine."""


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` if given ("cpu", "cuda", "cuda:1"…), else CUDA when present, else CPU.
    Raises `DeviceNotAvailable` for a device this machine does not have."""
    if not requested or requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise DeviceNotAvailable(f"device {requested!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceNotAvailable(f"device {requested!r}: no CUDA device is available on this machine")
        if device.index is not None and device.index >= count:
            raise DeviceNotAvailable(f"device {requested!r}: this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        raise DeviceNotAvailable(f"device {requested!r}: only cpu and cuda are supported")
    return device


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over parameter names, shapes and fp32 values: identifies exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Autoencoder:
    """A loaded autoencoder behind one interface: `encode`, `decode`, and what identifies it.

    `encode` takes RGB images (B, 3, H, W) in [−1, 1] and returns the deterministic latent
    (B, C, h, w); `decode` returns RGB images of the same layout, unclamped by us (Qwen-Image and
    Wan clamp inside their own decoder, as their pipelines see it). Video families get the frame
    axis added and removed here; RGBA families (4 input channels) get an opaque alpha (+1) added
    before each encode and the decoded alpha dropped: the worker scores RGB pixels, and an upload
    without alpha is opaque. Video families keep per-call caches on the module, so one
    `Autoencoder` serves one thread: scorers side by side take `for_another_thread()`.
    """

    name: str
    kind: Kind
    module: torch.nn.Module
    spatial_factor: int
    device: torch.device
    dtype: torch.dtype
    weights_sha256: str
    source: str
    compile_mode: str = "off"  # "off" | "default" | "reduce-overhead" (CUDA graphs) | "max-autotune"
    channels_last: bool = True  # NHWC convolutions: 1.3–3× faster on CPU here (docs/PERFORMANCE.md)

    def __post_init__(self) -> None:
        self.family = family(self.kind)
        self.channels_last = self.channels_last and self.family.channels_last
        self._rgba = image_channels(self.kind, dict(self.module.config)) == 4
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        # The scoring path calls encode and decode (it keeps the latents), so those are what
        # `compile_mode` compiles; shapes are fixed per batch.
        self._encode, self._decode = self._encode_eager, self._decode_eager
        if self.compile_mode != "off":
            self._encode = torch.compile(self._encode_eager, mode=self.compile_mode, dynamic=False)
            self._decode = torch.compile(self._decode_eager, mode=self.compile_mode, dynamic=False)

    def for_another_thread(self) -> "Autoencoder":
        """This model for a scorer on another thread of the same device: the same object when
        its module keeps no per-call state (the weights are shared), else a copy with a module
        of its own (video VAEs cache features on the module during each call)."""
        if not self.family.frames:
            return self
        return replace(self, module=copy.deepcopy(self.module))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latents: the posterior mode, VQ pre-quantisation latents, DC's latent."""
        return self._owned(self._encode(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixels in [−1, 1] units (not clamped here); VQ decodes with quantisation, as diffusers does."""
        return self._owned(self._decode(z))

    def _owned(self, out: torch.Tensor) -> torch.Tensor:
        """CUDA graphs (`reduce-overhead`) reuse their output buffers at the next call; scoring
        keeps E(x) while E(x1) is computed, so those outputs are copied out."""
        return out.clone() if self.compile_mode == "reduce-overhead" else out

    def _encode_eager(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        if self._rgba:
            x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        if self.family.frames:
            x = x.unsqueeze(2)
        out = self.module.encode(x)
        z = out.latent_dist.mode() if self.family.latent == "mode" else getattr(out, self.family.latent)
        return z[:, :, 0] if self.family.frames else z

    def _decode_eager(self, z: torch.Tensor) -> torch.Tensor:
        if self.family.frames:
            z = z.unsqueeze(2)
        x = self.module.decode(z).sample
        if self.family.frames:
            x = x[:, :, 0]
        return x[:, :3] if self._rgba else x

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """D(E(x))."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.decode(self.encode(x))


def from_module(
    module: torch.nn.Module,
    kind: Kind,
    name: str = "model",
    device: str | None = "cpu",
    dtype: DType = "fp32",
    source: str = "<in memory>",
    compile_mode: str = "off",
    channels_last: bool = True,
) -> Autoencoder:
    """Wrap an already-built diffusers module (tests, training scripts)."""
    weights_sha256 = state_dict_sha256(module)
    dev = pick_device(device)
    torch_dtype = _TORCH_DTYPES[dtype]
    module = module.to(device=dev)
    if torch_dtype != torch.float32:  # avoid diffusers' cast warning when nothing changes
        module = module.to(dtype=torch_dtype)
    module = module.eval().requires_grad_(False)
    return Autoencoder(
        name=name,
        kind=kind,
        module=module,
        spatial_factor=spatial_factor_of(kind, dict(module.config)),
        device=dev,
        dtype=torch_dtype,
        weights_sha256=weights_sha256,
        source=source,
        compile_mode=compile_mode,
        channels_last=channels_last,
    )


def _read_local_config(model: str, subfolder: str | None) -> dict[str, Any] | None:
    path = Path(model).expanduser()
    if subfolder:
        path = path / subfolder
    config = path / "config.json"
    if config.is_file():
        return json.loads(config.read_text())
    return None


def _read_cached_config(model: str, subfolder: str | None) -> dict[str, Any] | None:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            model, "config.json", subfolder=subfolder or None, local_files_only=True
        )
    except Exception:  # not cached, invalid repo id, offline: all mean "not here"
        return None
    return json.loads(Path(path).read_text())


def load_autoencoder(
    model: str,
    *,
    subfolder: str | None = None,
    kind: str | None = None,
    name: str | None = None,
    device: str | None = None,
    dtype: DType = "fp32",
    compile_mode: str = "off",
    channels_last: bool = True,
) -> Autoencoder:
    """Load a diffusers autoencoder from a local directory or the local hub cache, never the network.

    `kind` (a row of `FAMILIES`) is read from the config's `_class_name` unless given. Raises
    `ModelNotFound` with a one-line instruction when the config or weights are missing, or when
    the class is not one the adapter knows (the line names it and lists the supported families).
    """
    local = Path(model).expanduser()
    is_local = local.exists()
    where = f"{model}" + (f" (subfolder {subfolder})" if subfolder else "")
    if is_local and not local.is_dir():
        raise ModelNotFound(f"model {where}: {model} is a file; give a diffusers model directory")
    config = _read_local_config(model, subfolder) if is_local else _read_cached_config(model, subfolder)
    if config is None:
        if is_local:
            hint = (
                f"no config.json in {local / subfolder if subfolder else local}; give a diffusers "
                "autoencoder directory (config.json + diffusion_pytorch_model.safetensors), or "
                "--subfolder vae for a whole pipeline directory"
            )
        elif model.startswith(("/", ".", "~")) or model.count("/") > 1:
            hint = f"directory {local} does not exist"
        else:
            hint = (
                "not a local directory and not in the local Hugging Face cache; download it "
                f"where a network is allowed (`hf download {model}`) and copy the cache, or "
                "pass a local directory"
            )
        raise ModelNotFound(f"model {where}: {hint}")
    class_name = config.get("_class_name", "")
    if kind is None:
        detected = family_of_class(class_name)
        if detected is None:
            raise ModelNotFound(
                f"model {where}: config class {class_name or '(none)'!r} is not a supported autoencoder; "
                f"supported families: {supported_families()}"
            )
        kind = detected.kind
    elif kind not in KINDS:
        raise ModelNotFound(f"model {where}: unknown kind {kind!r}; supported families: {supported_families()}")
    cls = autoencoder_class(kind)
    try:
        module = cls.from_pretrained(
            str(local) if is_local else model,
            subfolder=subfolder or None,
            local_files_only=True,
            torch_dtype=torch.float32,
        )
    except (OSError, EnvironmentError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(f"model {where}: weights could not be loaded: {first}") from exc
    if (channels := image_channels(kind, dict(module.config))) not in (3, 4):
        raise ModelNotFound(
            f"model {where}: {class_name or 'the autoencoder'} takes {channels}-channel images; "
            "only RGB (3) and RGBA (4) autoencoders can score images"
        )
    return from_module(
        module,
        kind,
        name=name or (local.name if is_local else model),
        device=device,
        dtype=dtype,
        source=str(local.resolve()) if is_local else model,
        compile_mode=compile_mode,
        channels_last=channels_last,
    )
