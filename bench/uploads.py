"""Benchmark: uploads of realistic size (issue 16). What decoding, preparing and scoring cost per
image at 0.25, 1, 4 and 12 MP, in JPEG and in PNG, under the worker's tile policy.

Each upload is photo-like: the package's photographs enlarged to the size, with sensor-like
noise, saved as a phone or an editor would (JPEG quality 90; PNG at zlib's default level). It
goes through the serve path in a fresh process, `--repeats` times:
- decode: `images.decode_image`, with the serve limits;
- prepare: `Watchlist.prepare` (the tiles each model scores, and their GLCM homogeneity);
- score: `Watchlist.score` for one zoo model (`--model`), torch on one thread.

Times are CPU seconds of the thread doing the work (`time.thread_time`; torch on one thread
computes on the calling thread), so other work on the machine disturbs them less than wall
time would: images/s per core = 1 / seconds. The peak is the process's resident memory over the
upload, above what it held before (Python, torch, the model).

The last line answers how many CPU cores it takes to feed one GPU scoring `--gpu-rate` images/s
per model at 512²: that rate × the decode and prepare CPU seconds of a 512² upload.

No reduced decoding: JPEG's draft mode decodes at 1/2, 1/4 or 1/8 scale in the DCT domain, which
is resampling, and resampling destroys the decoder's fingerprint that the method reads
(METHOD.md: the worker never resamples). The work per image is bounded by the tile policy
instead (at most 4 tiles of 512² per model); only decoding grows with the upload.

    .venv/bin/python bench/uploads.py [--doc docs/PERFORMANCE.md]
    .venv/bin/python bench/uploads.py --render bench/results-uploads.json --doc docs/PERFORMANCE.md
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench import commit, machine, made_with, save  # noqa: E402
from bench.verdicts import status_kb  # noqa: E402

SIZES = (("512²", 512, 512), ("0.25 MP", 577, 433), ("1 MP", 1155, 866), ("4 MP", 2309, 1732),
         ("12 MP", 4000, 3000))
FORMATS = ("JPEG", "PNG")


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photograph of the package enlarged to width × height, with noise of a camera sensor
    (σ = 2 levels), so that it compresses as a photograph does, not as a smooth pattern."""
    from PIL import Image

    from worker.corpus import heldout_photos

    photo = max(heldout_photos(), key=lambda p: p.shape[0] * p.shape[1])
    big = np.asarray(Image.fromarray(photo).resize((width, height), Image.BICUBIC), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, 2.0, big.shape).astype(np.float32)
    return np.clip(big + noise, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    else:
        Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def child(path: str, model_name: str, repeats: int) -> None:
    """In a fresh process: decode, prepare and score one upload `repeats` times; print JSON."""
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
    tile = calibration.preprocessing.get("tile")
    max_tiles = calibration.preprocessing.get("max_tiles", DEFAULT_MAX_TILES)
    watchlist = Watchlist([WatchedModel(model_name, model, calibration, tile, max_tiles, calibration.scorer)], 16,
                          pixel_budget(model.device))
    watchlist.probe()  # warm: the first call allocates what every call needs
    data = Path(path).read_bytes()
    rss_before = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    times: dict[str, list[float]] = {"decode": [], "prepare": [], "score": []}
    tiles = 0
    for _ in range(repeats):
        t0 = time.thread_time()
        image = decode_image(data, ImageSettings())
        t1 = time.thread_time()
        prepared = watchlist.prepare(image)
        t2 = time.thread_time()
        watchlist.score([prepared])
        t3 = time.thread_time()
        tiles = len(prepared.crops[0])
        del image, prepared
        for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[key].append(seconds)
    print(json.dumps({**{k: float(np.median(v)) for k, v in times.items()}, "tiles": tiles, "tile": tile,
                      "peak_above_mb": (status_kb("VmHWM") - rss_before) / 1024, "before_mb": rss_before / 1024}))


def run(model_name: str, repeats: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, width, height in SIZES:
            pixels = photo_like(width, height)
            for fmt in FORMATS:
                path = Path(tmp) / f"{width}x{height}.{fmt.lower()}"
                path.write_bytes(encode(pixels, fmt))
                out = subprocess.run([sys.executable, __file__, "--child", str(path), model_name, str(repeats)],
                                     capture_output=True, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
                if out.returncode != 0:
                    raise SystemExit(f"uploads: the {label} {fmt} child failed:\n{out.stderr[-2000:]}")
                row = {"size": label, "width": width, "height": height, "format": fmt, "bytes": path.stat().st_size,
                       **json.loads(out.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def markdown(r: dict) -> str:
    lines = [made_with(r), "", f"Model `{r['model']}`, tiles of {r['rows'][0]['tile']}², median of {r['repeats']} "
             "per upload, CPU seconds on one thread:", "",
             "| upload | format | bytes | tiles scored | decode (ms) | prepare (ms) | score (ms) | decode + prepare, "
             "images/s per core | all three, images/s per core | peak above the idle worker (MB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        feed = row["decode"] + row["prepare"]
        lines.append(f"| {row['size']} ({row['width']}×{row['height']}) | {row['format']} | {row['bytes']:,} | "
                     f"{row['tiles']} | {row['decode'] * 1000:.1f} | {row['prepare'] * 1000:.1f} | "
                     f"{row['score'] * 1000:.0f} | {1 / feed:.1f} | {1 / (feed + row['score']):.2f} | "
                     f"{row['peak_above_mb']:.0f} |")
    lines += ["", f"CPU cores to decode and prepare for one GPU that scores {r['gpu_rate']:.0f} images/s per model "
                  "(for each watched model beyond the first, add its own prepare when its tiles differ):", "",
              "| upload | " + " | ".join(FORMATS) + " |", "|---|" + "---:|" * len(FORMATS)]
    for label in dict.fromkeys(x["size"] for x in r["rows"]):
        cells = [next(x for x in r["rows"] if x["size"] == label and x["format"] == fmt) for fmt in FORMATS]
        lines.append(f"| {label} | " + " | ".join(f"{r['gpu_rate'] * (c['decode'] + c['prepare']):.2f}" for c in cells)
                     + " |")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    """Images/s per core against the upload's megapixels, for decoding and preparing alone and
    for all three stages, per format (log-log)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for fmt, color in zip(FORMATS, ("tab:blue", "tab:orange")):
        rows = sorted((x for x in r["rows"] if x["format"] == fmt), key=lambda x: x["width"] * x["height"])
        mp = [x["width"] * x["height"] / 1e6 for x in rows]
        ax.plot(mp, [1 / (x["decode"] + x["prepare"]) for x in rows], "o--", color=color, label=f"{fmt}: decode + prepare")
        ax.plot(mp, [1 / (x["decode"] + x["prepare"] + x["score"]) for x in rows], "s-", color=color,
                label=f"{fmt}: decode + prepare + score")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xticks([0.25, 1, 4, 12])
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("upload, megapixels")
    ax.set_ylabel("images/s per core")
    ax.set_title(f"{r['model']}, tiles of {r['rows'][0]['tile']}², {r['machine']['cpu']}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kl-f4c4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-rate", type=float, default=55.0, help="images/s per model a GPU scores at 512²")
    parser.add_argument("--out", default="bench/results-uploads.json")
    parser.add_argument("--doc", type=Path, help="write the table into this Markdown file (section bench:uploads), "
                                                 "and the plot into img/bench-uploads.png beside it")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON", help="no run: an earlier run's --out, again")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        results = {"machine": machine(), "commit": commit(), "model": args.model, "repeats": args.repeats,
                   "gpu_rate": args.gpu_rate,
                   "command": " ".join(["bench/uploads.py", *sys.argv[1:]]), "rows": run(args.model, args.repeats)}
        save(results, args.out)
    text = markdown(results)
    print(text)
    if args.doc:
        from worker.doc_sections import write_section

        write_section(args.doc, "bench:uploads", text, create=True)
        plot(results, args.doc.parent / "img" / "bench-uploads.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
