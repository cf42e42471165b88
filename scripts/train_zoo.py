"""Train the mini model zoo (worker/zoo) on crops of scikit-image's photographs, on the CPU.

Each member is a tiny diffusers autoencoder trained with plain reconstruction MSE (plus the
family's own regulariser: a small KL term for AutoencoderKL, the commitment/codebook loss for
VQModel). Seeds are fixed, one thread per process, two processes at a time by default: the whole
zoo trains in about 20 minutes on 2 cores. Weights are written in diffusers layout to
worker/zoo/models/<name>/ with a training.json beside them.

    .venv/bin/python scripts/train_zoo.py [--steps 1500] [--jobs 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import numpy as np
import torch

from worker.models import autoencoder_class
from worker.corpus import load_photo, random_crops
from worker.zoo import TRAIN_PHOTOS, ZOO, ZooModel

CROP = 32
BATCH = 32
KL_WEIGHT = 1e-6


def train_one(member: ZooModel, steps: int) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(member.seed)
    rng = np.random.default_rng(member.seed)
    photos = [load_photo(name) for name in TRAIN_PHOTOS]
    model = autoencoder_class(member.kind)(**member.config)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=5e-5)
    started = time.perf_counter()
    recent: list[float] = []
    for step in range(steps):
        crops = random_crops(photos, BATCH, CROP, rng)
        if rng.random() < 0.5:
            crops = crops[:, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1
        if member.kind == "kl":
            posterior = model.encode(x).latent_dist
            recon = model.decode(posterior.sample()).sample
            loss = torch.mean((recon - x) ** 2)
            total = loss + KL_WEIGHT * posterior.kl().mean()
        elif member.kind == "vq":
            out = model.decode(model.encode(x).latents)
            loss = torch.mean((out.sample - x) ** 2)
            total = loss + out.commit_loss.mean()
        else:
            recon = model.decode(model.encode(x).latents).sample
            loss = torch.mean((recon - x) ** 2)
            total = loss
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        schedule.step()
        recent = (recent + [loss.item()])[-100:]
        if step % 250 == 0 or step == steps - 1:
            print(f"{member.name}: step {step:5d} mse {np.mean(recent):.5f}", flush=True)
    model.eval()
    member.path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(member.path, safe_serialization=True)
    record = {
        "name": member.name,
        "kind": member.kind,
        "seed": member.seed,
        "steps": steps,
        "batch": BATCH,
        "crop": CROP,
        "train_photos": list(TRAIN_PHOTOS),
        "final_mse_last100": float(np.mean(recent)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
    }
    (member.path / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _run(args: tuple[ZooModel, int]) -> dict:
    return train_one(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    members = [m for m in ZOO if not args.only or m.name in args.only]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for record in pool.imap_unordered(_run, [(m, args.steps) for m in members]):
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
