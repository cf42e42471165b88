"""Where a CPU scorer's time goes: torch.profiler over pure scoring of zoo images, on one torch
thread (as each CPU scorer runs), in the worker's batch size and pixel budget.

    .venv/bin/python bench/profile_scoring.py [--model kl-f4c4] [--size 128] [--n 48] [--rows 15]

Prints the operators by their own CPU time, after one untimed batch (oneDNN builds its kernels
on the first call of each shape).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from worker.corpus import model_images  # noqa: E402
from worker.models import load_autoencoder  # noqa: E402
from worker.scoring import pixel_budget, score_images  # noqa: E402
from worker.zoo import zoo_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kl-f4c4")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_autoencoder(str(zoo_model(args.model).path), device="cpu")
    images = list(model_images(args.model, args.n, args.size, 0))
    budget = pixel_budget(model.device)
    score_images(model, images[:args.batch], batch_size=args.batch, max_pixels=budget)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        score_images(model, images, batch_size=args.batch, max_pixels=budget)
    print(f"{args.model}, {args.n} images of {args.size}², one thread, batches of {args.batch}, budget {budget} px")
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
