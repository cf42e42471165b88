"""What the verdicts cost: the fused method's statistics against t' alone, and uploads of any size
under the tile policy. Prints tables (and, with --doc, writes them into docs/ACCURACY.md between
`<!-- BEGIN verdicts:cost -->` / `<!-- END verdicts:cost -->`).

1. Throughput, images/s of one zoo model, decoded images in memory → numbers:
   - "t' alone": two `reconstruct` calls and the two MSEs (the paper's path, as before this change);
   - "fused statistics": `scoring.reconstruction_stats` (encode/decode separately, latents kept,
     high-pass energies) plus the fused score; both with GLCM H.
2. Large uploads: one PNG of 1, 4, 8, 12 and 40 MP read, decoded (`images.decode_image`, the serve
   limits) and scored through `Watchlist.prepare`/`score` with the default policy (at most 4 tiles of
   512²), each in a fresh process: wall time and peak RSS; and the whole image at full resolution
   (tile=None, the old default) for comparison at the sizes that fit.

    .venv/bin/python bench/verdicts.py [--doc docs/ACCURACY.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PAPER = "t' alone"


def throughput(model_name: str, size: int, batch: int, n: int, repeats: int) -> dict[str, float]:
    import torch

    from worker.corpus import heldout_photos, model_images
    from worker.methods import Method
    from worker.models import load_autoencoder
    from worker.scoring import homogeneity, reconstruction_stats, to_tensor
    from worker.zoo import zoo_model

    model = load_autoencoder(str(zoo_model(model_name).path), name=model_name, device="cpu")
    cal = json.loads(zoo_model(model_name).calibration_path.read_text())
    fused = Method.from_record(cal["method"]) if cal["method"]["name"] == "fused" else None
    photos = [p for p in heldout_photos() if min(p.shape[:2]) >= size]
    images = list(model_images(model_name, n, size, seed=5, photos=photos))
    x_all = [torch.stack([to_tensor(im) for im in images[i: i + batch]]) for i in range(0, n, batch)]

    @torch.inference_mode()
    def paper_only() -> None:
        for x, start in zip(x_all, range(0, n, batch)):
            x1 = model.reconstruct(x)
            x2 = model.reconstruct(x1)
            l1 = (x1.float() - x).pow(2).mean(dim=(1, 2, 3))
            l2 = (x2.float() - x1.float()).pow(2).mean(dim=(1, 2, 3))
            _ = [float(a / b) * homogeneity(im) for a, b, im in zip(l1, l2, images[start: start + batch])]

    def fused_stats() -> None:
        from worker.scoring import combine

        for x, start in zip(x_all, range(0, n, batch)):
            stats = reconstruction_stats(model, x)
            scores = [combine(float(stats["loss1"][j]), float(stats["loss2"][j]), homogeneity(im),
                              **{k: float(stats[k][j]) for k in ("highpass1", "highpass2", "latent_shift", "latent_var")})
                      for j, im in enumerate(images[start: start + batch])]
            if fused is not None:
                fused.score_many(scores)

    out = {}
    paper_only(), fused_stats()  # warm-up
    for label, fn in ((PAPER, paper_only), ("fused statistics", fused_stats)):
        best = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best.append(n / (time.perf_counter() - t0))
        out[label] = float(np.median(best))
    return out


def make_png(megapixels: float, path: Path) -> tuple[int, int]:
    """A 4:3 PNG of about `megapixels` (a smooth pattern: quick to write and to read)."""
    from PIL import Image

    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(megapixels * 1e6 / width))
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = ((np.arange(width) // 3) % 256).astype(np.uint8)[None, :]
    pixels[..., 1] = ((np.arange(height) // 5) % 256).astype(np.uint8)[:, None]
    pixels[..., 2] = ((np.arange(height)[:, None] + np.arange(width)[None, :]) // 7 % 256).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)
    return width, height


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def large_child(path: str, tile: str, model_name: str) -> None:
    """In a fresh process: read and decode one PNG and score it; print JSON (peak RSS of the
    process, and the RSS before the upload: Python, torch and the model)."""
    import torch

    from worker.calibration import Calibration
    from worker.config import ImageSettings
    from worker.images import decode_image
    from worker.models import load_autoencoder
    from worker.scoring import DEFAULT_MAX_TILES, pixel_budget
    from worker.watchlist import WatchedModel, Watchlist
    from worker.zoo import zoo_model

    torch.set_num_threads(1)
    model = load_autoencoder(str(zoo_model(model_name).path), name=model_name, device="cpu")
    calibration = Calibration.load(zoo_model(model_name).calibration_path)
    tile_value = None if tile == "full" else int(tile)
    watchlist = Watchlist([WatchedModel(model_name, model, calibration, tile_value, DEFAULT_MAX_TILES if tile_value else 1,
                                        calibration.scorer)], 16, pixel_budget(model.device))
    watchlist.probe()  # warm: the first call allocates what every call needs
    # /proc, not getrusage: ru_maxrss survives exec, so it would count the parent's peak.
    rss_before = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    t0 = time.perf_counter()
    image = decode_image(Path(path).read_bytes(), ImageSettings())
    prepared = watchlist.prepare(image)
    del image
    scores = watchlist.score([prepared])
    watchlist.verdicts(scores[0])
    seconds = time.perf_counter() - t0
    peak = status_kb("VmHWM")
    print(json.dumps({"tile": tile, "seconds": seconds, "peak_rss_mb": peak / 1024, "before_mb": rss_before / 1024}))


def section(doc: Path | None, lines: list[str]) -> None:
    print("\n".join(lines))
    if doc is None:
        return
    from worker.doc_sections import write_section

    write_section(doc, "verdicts:cost", "\n".join(lines), create=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", default=None)
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        large_child(args.child[0], args.child[1], args.child[2])
        return 0
    import torch

    torch.set_num_threads(1)
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        "1 thread. Made with `.venv/bin/python bench/verdicts.py --doc docs/ACCURACY.md`.",
        "",
        "| model | images | batch | t' alone, images/s | fused statistics, images/s | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model_name in ("kl-f4c4", "tiny-f8"):
        for size, batch, n in ((64, 16, 128), (256, 1, 16)):
            r = throughput(model_name, size, batch, n, args.repeats)
            paper, fused = r[PAPER], r["fused statistics"]
            lines.append(f"| {model_name} | {size}² | {batch} | {paper:.1f} | {fused:.1f} | {fused / paper:.2f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    lines += [
        "",
        "One upload of each size (a PNG, decoded with the serve limits) through `Watchlist.prepare` → `score` →",
        "`verdicts` for the smallest zoo model (kl-f4c4), each in a fresh process: time from the bytes to the",
        "verdict, the process's RSS before the upload (Python, torch, the model, warmed up) and its peak.",
        "",
        "| upload | preprocessing | seconds | RSS before MB | peak RSS MB |",
        "|---|---|---:|---:|---:|",
    ]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for mp, tile in ((1, "512"), (4, "512"), (8, "512"), (12, "512"), (40, "512"), (1, "full"), (4, "full")):
            path = Path(tmp) / f"{mp}.png"
            width, height = make_png(mp, path)
            out = subprocess.run([sys.executable, __file__, "--child", str(path), tile, "kl-f4c4"], capture_output=True,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
            if out.returncode != 0:
                raise SystemExit(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            label = "at most 4 tiles of 512² (default)" if tile == "512" else "whole image (tile=None, the old default)"
            lines.append(f"| {mp} MP ({width}×{height}) | {label} | {r['seconds']:.1f} | {r['before_mb']:.0f} | "
                         f"{r['peak_rss_mb']:.0f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    section(Path(args.doc) if args.doc else None, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
