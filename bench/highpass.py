"""Micro-benchmark: the high-pass residual's 3×3 box mean, as `avg_pool2d` on the decoder's
channels-last output against the worker's separable sum (`worker.scoring._highpass_energy`).

    .venv/bin/python bench/highpass.py [--images 8] [--size 128] [--repeats 50]

One torch thread, as each CPU scorer runs; prints ms per call for both and their largest
relative difference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from worker.scoring import _highpass_energy  # noqa: E402


def pooled(d: torch.Tensor) -> torch.Tensor:
    """The definition, as it was computed before."""
    box = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(d, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (d - box).pow(2).mean(dim=(1, 2, 3))


def per_call_ms(fn, d: torch.Tensor, repeats: int) -> float:
    fn(d)
    started = time.perf_counter()
    for _ in range(repeats):
        fn(d)
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    d = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    d = d.contiguous(memory_format=torch.channels_last)
    before, now = per_call_ms(pooled, d, args.repeats), per_call_ms(_highpass_energy, d, args.repeats)
    difference = float(((_highpass_energy(d) - pooled(d)).abs() / pooled(d).abs()).max())
    print(f"{args.images} images of {args.size}², channels-last, one thread: avg_pool2d {before:.2f} ms, "
          f"separable sum {now:.2f} ms per call ({before / now:.1f}×); largest relative difference {difference:.1e}")


if __name__ == "__main__":
    main()
