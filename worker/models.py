"""The model boundary: the only place that loads autoencoder weights or picks a device.

diffusers' autoencoder families expose encode/decode with different output types
(`AutoencoderKL.encode → .latent_dist`, `VQModel.encode → .latents` with quantisation in
`decode`, `AutoencoderTiny.encode → .latents`). `Autoencoder` adapts all three to one shape,
`encode(x) → z` and `decode(z) → x̂`, so the scoring core never sees a family.

Loading is offline-safe: a local directory (diffusers layout, optionally a `subfolder` such as
`vae` of a whole pipeline) or a hub id resolved from the local cache only. Nothing here reaches
the network; a missing model is a `ModelNotFound` with one line that says what to do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import AedrError

Kind = Literal["kl", "vq", "tiny"]
DType = Literal["fp32", "fp16", "bf16"]

_CLASS_KIND: dict[str, Kind] = {
    "AutoencoderKL": "kl",
    "VQModel": "vq",
    "AutoencoderTiny": "tiny",
}
_TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


class ModelNotFound(AedrError):
    """The named autoencoder cannot be found locally; `str()` is a one-line instruction."""


def autoencoder_class(kind: Kind) -> type[torch.nn.Module]:
    """The diffusers class of a family (imported lazily: diffusers is slow to import)."""
    import diffusers

    classes = {
        "kl": diffusers.AutoencoderKL,
        "vq": diffusers.VQModel,
        "tiny": diffusers.AutoencoderTiny,
    }
    try:
        return classes[kind]
    except KeyError:
        raise ValueError(f"unknown autoencoder kind {kind!r}; expected one of {sorted(classes)}") from None


def spatial_factor_of(kind: Kind, config: dict[str, Any]) -> int:
    """Downsampling factor between pixels and latents, from a diffusers config."""
    if kind == "tiny":
        blocks = config.get("encoder_block_out_channels", (64, 64, 64, 64))
    else:
        blocks = config.get("block_out_channels", (64,))
    return 2 ** (len(blocks) - 1)


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
    """A loaded autoencoder behind one interface: `encode`, `decode`, and what identifies it."""

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
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self._roundtrip = self._roundtrip_eager
        if self.compile_mode != "off":
            self._roundtrip = torch.compile(self._roundtrip_eager, mode=self.compile_mode, dynamic=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latents: the posterior mode for KL, pre-quantisation latents for VQ."""
        out = self.module.encode(x.to(self.device, self.dtype))
        if self.kind == "kl":
            return out.latent_dist.mode()
        return out.latents

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixels in [−1, 1] units (not clamped); VQ decodes with quantisation, as diffusers does."""
        return self.module.decode(z).sample

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """D(E(x)), compiled when `compile_mode` asks for it (shapes are fixed per batch)."""
        return self._roundtrip(x)

    def _roundtrip_eager(self, x: torch.Tensor) -> torch.Tensor:
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
    kind: Kind | None = None,
    name: str | None = None,
    device: str | None = None,
    dtype: DType = "fp32",
    compile_mode: str = "off",
    channels_last: bool = True,
) -> Autoencoder:
    """Load a diffusers autoencoder from a local directory or the local hub cache, never the network.

    `kind` is read from the config's `_class_name` unless given. Raises `ModelNotFound` with a
    one-line instruction when the config or weights are missing.
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
    if kind is None:
        class_name = config.get("_class_name", "")
        if class_name not in _CLASS_KIND:
            raise ModelNotFound(
                f"model {where}: config class {class_name or '(none)'!r} is not a supported "
                f"autoencoder ({', '.join(_CLASS_KIND)}); pass --kind to force one"
            )
        kind = _CLASS_KIND[class_name]
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
