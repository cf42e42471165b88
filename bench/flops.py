"""Cost of one AEDR double reconstruction, x1 = D(E(x)) and x2 = D(E(x1)), per autoencoder family.

Real architectures: each family's published configuration (sources beside each config below),
built with random weights on torch's `meta` device, so nothing is downloaded, allocated or
computed; `torch.utils.flop_counter.FlopCounterMode` counts the FLOPs of the worker's own
round trip (`worker.models.Autoencoder`, the same code that scores). Counting on `meta` is
checked against counting a real computation on the CPU, at a small size, for three real
architectures and every zoo member (they must be equal, or the script stops). Then: the CPU
time of two real architectures at a small size, and the zoo members' FLOPs and CPU time.

Prints a markdown report (docs/PERFORMANCE.md, "Cost per autoencoder family"):

    .venv/bin/python bench/flops.py [--size 512] [--tile 256] [--zoo-sizes 64 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.models import Autoencoder, autoencoder_class, load_autoencoder, spatial_factor_of  # noqa: E402


@dataclass(frozen=True)
class RealAutoencoder:
    kind: str
    generators: str
    config: dict[str, Any]
    source: str


_SD_BLOCKS = {
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
}

REAL: tuple[RealAutoencoder, ...] = (
    # Same architecture for SD 1.5/2.x (sd-vae-ft-mse) and SDXL (only scaling_factor differs);
    # the SDXL VAE config as in bench/gpu.py and e.g. p1atdev/vision-ft src/models/auraflow/vae.py.
    RealAutoencoder("kl", "SD 1.5 / 2.x / SDXL", {**_SD_BLOCKS, "latent_channels": 4},
                    "stabilityai/sdxl-vae config.json (block_out 128/256/512/512, 2 layers, 4 ch)"),
    # black-forest-labs/FLUX.1-dev vae/config.json: 16 channels, no quant convs (Z-Image and
    # HiDream reuse the FLUX.1 VAE; SD3.5's differs only in scaling/shift factors).
    RealAutoencoder("kl", "SD3.5 / FLUX.1 / Z-Image / HiDream",
                    {**_SD_BLOCKS, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False},
                    "black-forest-labs/FLUX.1-dev vae/config.json"),
    # diffusers scripts/convert_flux2_to_diffusers.py builds `AutoencoderKLFlux2()` with the
    # class defaults (128/256/512/512, 32 latent channels, 2×2 latent patchify + batch-norm).
    RealAutoencoder("flux2", "FLUX.2", {}, "diffusers scripts/convert_flux2_to_diffusers.py: AutoencoderKLFlux2()"),
    # Qwen/Qwen-Image vae/config.json: base_dim 96, dim_mult 1/2/4/4, 2 res blocks, z_dim 16,
    # temperal_downsample F/T/T (equal to the class defaults).
    RealAutoencoder("qwenimage", "Qwen-Image",
                    {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                     "temperal_downsample": [False, True, True]},
                    "Qwen/Qwen-Image vae/config.json"),
    # No public config to cross-check: diffusers 0.42.1's AutoencoderKLQwenImage21 defaults
    # (base 96 / decoder 144, z_dim 64, dim_mult 1/2/4/8/8, RGBA in and out, ×16).
    RealAutoencoder("qwenimage21", "Qwen-Image 2.x", {}, "diffusers 0.42.1 AutoencoderKLQwenImage21 defaults"),
    # diffusers scripts/convert_wan_to_diffusers.py: `AutoencoderKLWan()` (Wan 2.1 VAE) and
    # `vae22_diffusers_config` (Wan 2.2 TI2V-5B VAE: 2×2 pixel patchify, ×16, 48 channels).
    RealAutoencoder("wan", "Wan 2.1", {}, "diffusers scripts/convert_wan_to_diffusers.py: AutoencoderKLWan()"),
    RealAutoencoder("wan", "Wan 2.2 (TI2V-5B)",
                    {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "in_channels": 12, "out_channels": 12,
                     "patch_size": 2, "is_residual": True, "scale_factor_spatial": 16, "scale_factor_temporal": 4,
                     "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48},
                    "diffusers scripts/convert_wan_to_diffusers.py: vae22_diffusers_config"),
    # diffusers scripts/convert_dcae_to_diffusers.py, convert_ae / get_ae_config("dc-ae-f32c32-sana-1.0").
    RealAutoencoder("dc", "SANA (DC-AE f32c32)",
                    {"latent_channels": 32, "attention_head_dim": 32,
                     "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
                     "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
                     "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
                     "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
                     "encoder_layers_per_block": [2, 2, 2, 3, 3, 3], "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
                     "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
                     "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
                     "downsample_block_type": "conv", "upsample_block_type": "interpolate",
                     "decoder_norm_types": "rms_norm", "decoder_act_fns": "silu", "scaling_factor": 0.41407},
                    "diffusers scripts/convert_dcae_to_diffusers.py (dc-ae-f32c32-sana-1.0)"),
    # diffusers scripts/convert_hunyuan_image_to_diffusers.py, vae_config_diffusers (hunyuanimage2.1).
    RealAutoencoder("hunyuanimage", "HunyuanImage 2.1",
                    {"in_channels": 3, "out_channels": 3, "latent_channels": 64,
                     "block_out_channels": [128, 256, 512, 512, 1024, 1024], "layers_per_block": 2,
                     "spatial_compression_ratio": 32, "sample_size": 384, "scaling_factor": 0.75289},
                    "diffusers scripts/convert_hunyuan_image_to_diffusers.py (hunyuanimage2.1)"),
    # TAESD: AutoencoderTiny's defaults are madebyollin/taesd's (64-channel blocks, 1/3/3/3
    # encoder and 3/3/3/1 decoder blocks, 4 latent channels); TAESD3/TAEF1 have 16 channels.
    RealAutoencoder("tiny", "TAESD / TAESDXL", {}, "madebyollin/taesd config.json (= AutoencoderTiny defaults)"),
    # diffusers scripts/convert_kandinsky_to_diffusers.py MOVQ_CONFIG (kandinsky-2-2 movq/config.json).
    RealAutoencoder("vq", "Kandinsky 2.x (MoVQ)",
                    {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
                     "down_block_types": ["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
                     "up_block_types": ["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
                     "num_vq_embeddings": 16384, "block_out_channels": [128, 256, 256, 512], "vq_embed_dim": 4,
                     "layers_per_block": 2, "norm_type": "spatial"},
                    "diffusers scripts/convert_kandinsky_to_diffusers.py MOVQ_CONFIG"),
)
# Vendor dense peak (as in bench/gpu.py's PEAKS), for an upper bound on images/s.
PEAK_TFLOPS = {"H100/H200 bf16 dense": 989.4}
# Example watchlists for planning (rows of REAL by generator label).
WATCHLISTS = {
    "5 models: SDXL, FLUX.1, FLUX.2, Qwen-Image, SANA": (
        "SD 1.5 / 2.x / SDXL", "SD3.5 / FLUX.1 / Z-Image / HiDream", "FLUX.2", "Qwen-Image", "SANA (DC-AE f32c32)"),
    "10 models: every row but Wan 2.1": tuple(r.generators for r in REAL if r.generators != "Wan 2.1"),
}


def wrap(module: torch.nn.Module, kind: str, device: torch.device, channels_last: bool = False) -> Autoencoder:
    """The worker's adapter around a module, without hashing weights (meta tensors have none)."""
    return Autoencoder(name=kind, kind=kind, module=module.eval().requires_grad_(False),
                       spatial_factor=spatial_factor_of(kind, module.config), device=device, dtype=torch.float32,
                       weights_sha256="", source="bench", channels_last=channels_last)


def double_reconstruction_flops(model: Autoencoder, size: int) -> int:
    """FLOPs of x1 = D(E(x)), x2 = D(E(x1)) for one size×size image."""
    from torch.utils.flop_counter import FlopCounterMode

    from torch.nn.attention import SDPBackend, sdpa_kernel

    x = torch.zeros(1, 3, size, size, device=model.device)
    # Attention runs on the math backend while counting: its two matmuls are counted the same on
    # `meta` and on a real CPU (FlopCounterMode has no formula for CPU flash attention and would
    # count attention as zero there). The FLOPs are the kernel's, whatever backend scores.
    with FlopCounterMode(display=False) as counter, torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        model.reconstruct(model.reconstruct(x))
    return counter.get_total_flops()


def latent_shape(model: Autoencoder, size: int) -> tuple[int, ...]:
    with torch.inference_mode():
        return tuple(model.encode(torch.zeros(1, 3, size, size, device=model.device)).shape)


def real_row(real: RealAutoencoder, size: int, tile: int) -> dict[str, Any]:
    with torch.device("meta"):
        module = autoencoder_class(real.kind)(**real.config)
    model = wrap(module, real.kind, torch.device("meta"))
    flops, tile_flops = double_reconstruction_flops(model, size), double_reconstruction_flops(model, tile)
    latent = latent_shape(model, size)
    factor = model.spatial_factor
    if (size // latent[-2], size // latent[-1]) != (factor, factor):  # the config's factor is the real one
        raise SystemExit(f"{real.generators}: spatial factor {factor} from the config, latent {latent} at {size}²")
    return {"kind": real.kind, "generators": real.generators, "params": sum(p.numel() for p in module.parameters()),
            "factor": factor, "latent": latent, "gflop": flops / 1e9, "tile_gflop": tile_flops / 1e9, "source": real.source}


def meta_equals_real(kind: str, config: Any, size: int, label: str) -> int:
    """Count one architecture on `meta` and in a real CPU computation (random weights); they
    must agree, or the meta figures above could not be trusted."""
    torch.manual_seed(0)
    real_flops = double_reconstruction_flops(wrap(autoencoder_class(kind).from_config(config), kind, torch.device("cpu")), size)
    with torch.device("meta"):
        meta_module = autoencoder_class(kind).from_config(config)
    meta_flops = double_reconstruction_flops(wrap(meta_module, kind, torch.device("meta")), size)
    if meta_flops != real_flops:
        raise SystemExit(f"{label}: meta counts {meta_flops} FLOPs, a real computation {real_flops}")
    return real_flops


def seconds_per_image(model: Autoencoder, size: int, batch: int = 8, repeats: int = 5) -> float:
    from worker.scoring import reconstruction_losses

    x = torch.rand(batch, 3, size, size) * 2 - 1
    reconstruction_losses(model, x)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        reconstruction_losses(model, x)
        times.append((time.perf_counter() - started) / batch)
    return statistics.median(times)


def cpu_rate(real: RealAutoencoder, size: int) -> tuple[float, float]:
    """(seconds, achieved GFLOP/s) of one double reconstruction of one size² image with the real
    architecture (random weights) on this CPU, as the worker runs it (channels_last, fp32)."""
    torch.manual_seed(0)
    module = autoencoder_class(real.kind)(**real.config)
    model = wrap(module, real.kind, torch.device("cpu"), channels_last=True)
    flops = double_reconstruction_flops(model, size)
    from worker.scoring import reconstruction_losses

    x = torch.rand(1, 3, size, size) * 2 - 1
    reconstruction_losses(model, x)  # warm-up
    started = time.perf_counter()
    reconstruction_losses(model, x)
    seconds = time.perf_counter() - started
    return seconds, flops / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side for the real architectures")
    parser.add_argument("--tile", type=int, default=256, help="a second, tiled side (aedr --tile)")
    parser.add_argument("--zoo-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the CPU timings")
    parser.add_argument("--meta-check", nargs="*", default=["SD 1.5 / 2.x / SDXL", "Qwen-Image", "TAESD / TAESDXL"],
                        help="real architectures also counted in a real CPU computation, at --meta-check-size")
    parser.add_argument("--meta-check-size", type=int, default=64)
    parser.add_argument("--cpu-size", type=int, default=128, help="image side for timing real architectures on the CPU")
    parser.add_argument("--cpu-real", nargs="*", default=["SD 1.5 / 2.x / SDXL", "TAESD / TAESDXL"],
                        help="real architectures (generator labels) to time on this CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]
    from worker.zoo import ZOO

    rows = [real_row(r, args.size, args.tile) for r in REAL]
    checked = [r.generators for r in REAL if r.generators in args.meta_check]
    for r in REAL:
        if r.generators in args.meta_check:
            meta_equals_real(r.kind, r.config, args.meta_check_size, r.generators)
    print("### Real architectures: GFLOP per double reconstruction (random weights on `meta`)\n")
    print(f"| family (`kind`) | generators | parameters | factor | latent at {args.size}² "
          f"| GFLOP at {args.size}² | GFLOP at {args.tile}² |")
    print("|---|---|---:|---:|---|---:|---:|")
    for r in rows:
        latent = "×".join(str(d) for d in r["latent"][1:])
        print(f"| {r['kind']} | {r['generators']} | {r['params'] / 1e6:.1f} M | {r['factor']} | {latent} "
              f"| {r['gflop']:,.0f} | {r['tile_gflop']:,.0f} |")
    print(f"\nCounting on `meta` equals counting a real CPU computation (random weights, {args.meta_check_size}², "
          f"checked for: {', '.join(checked)}; and for every zoo member below). Attention is counted as its two "
          "matmuls.")
    print("\nSources of the configurations:\n")
    for r in rows:
        print(f"- {r['generators']}: {r['source']}")
    by_name = {r["generators"]: r for r in rows}
    rates = {}
    if args.cpu_real:
        print(f"\nOn this CPU ({torch.get_num_threads()} thread(s)), one double reconstruction of one {args.cpu_size}² "
              "image with the real architecture (random weights):\n")
        print("| generators | seconds | achieved GFLOP/s |")
        print("|---|---:|---:|")
        for name in args.cpu_real:
            seconds, rates[name] = cpu_rate(next(r for r in REAL if r.generators == name), args.cpu_size)
            print(f"| {name} | {seconds:.2f} | {rates[name]:.1f} |")
    cpu_rate_gflops = rates.get(REAL[0].generators)
    peak = PEAK_TFLOPS["H100/H200 bf16 dense"]
    print(f"\nExample watchlists, GFLOP per image (the sum over the models), and what that means at "
          f"{args.size}²: seconds per image on this CPU at the rate measured above for the SD row, and images/s "
          f"on an H100/H200 if it ran at its full bf16 dense peak ({peak:g} TFLOP/s; an upper bound, "
          "bench/gpu.py measures the real fraction):\n")
    print(f"| watchlist | GFLOP at {args.size}² | GFLOP at {args.tile}² | CPU s per image at {args.size}² "
          f"| images/s at the GPU peak, {args.size}² |")
    print("|---|---:|---:|---:|---:|")
    for label, names in WATCHLISTS.items():
        total = sum(by_name[n]["gflop"] for n in names)
        tiled = sum(by_name[n]["tile_gflop"] for n in names)
        cpu = f"{total / cpu_rate_gflops:,.0f}" if cpu_rate_gflops else "–"
        print(f"| {label} | {total:,.0f} | {tiled:,.0f} | {cpu} | {peak * 1000 / total:.1f} |")

    print("\n### Zoo members: FLOPs (meta count = real count, checked) and CPU time per image\n")
    header = " | ".join(f"MFLOP at {s}² | ms per image at {s}²" for s in args.zoo_sizes)
    print(f"| zoo model | family | parameters | {header} |")
    print("|---|---|---:|" + "---:|" * (2 * len(args.zoo_sizes)))
    for member in ZOO:
        model = load_autoencoder(str(member.path), name=member.name, device="cpu")
        cells = []
        for size in args.zoo_sizes:
            flops = meta_equals_real(member.kind, model.module.config, size, member.name)
            cells += [f"{flops / 1e6:,.0f}", f"{1000 * seconds_per_image(model, size):.1f}"]
        params = sum(p.numel() for p in model.module.parameters())
        print(f"| {member.name} | {member.kind} | {params / 1e6:.2f} M | " + " | ".join(cells) + " |")
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()[0]
    print(f"\nCPU timings: batch 8 (zoo; median of 5) or 1 (real architectures; one run after a warm-up), "
          f"{torch.get_num_threads()} thread(s), channels_last as the worker runs; {cpu}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"1-minute load average {load_at_start:.1f} at "
          f"the start, {load:.1f} at the end (other work on a shared machine slows the timings, not the FLOPs).")


if __name__ == "__main__":
    main()
