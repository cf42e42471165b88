"""Train the mini model zoo (worker/zoo) on crops of scikit-image's photographs, on the CPU.

Each member is a tiny diffusers autoencoder trained with plain reconstruction MSE plus its
family's own regulariser: a small KL term for the posterior families (AutoencoderKL, FLUX.2,
Qwen-Image, Wan, HunyuanImage), the commitment/codebook loss for VQModel, nothing for the
deterministic AutoencoderTiny and SANA's DC-AE. Video VAEs train on one-frame clips, the layout
the worker scores them in (worker.models.FAMILIES says which families those are).

After training, the families whose pipelines normalise latents get that normalisation fitted
on training crops, as the real checkpoints carry it: FLUX.2's latent batch-norm running
statistics (weights), Qwen-Image/Wan `latents_mean`/`latents_std` and DC-AE/HunyuanImage
`scaling_factor` (config). They cancel in the worker's round trip (worker/models.py), so they
change no score; they make the shipped models what the family's pipeline would load.

Seeds are fixed, one thread per process, two processes at a time by default. Weights are
written in diffusers layout to worker/zoo/models/<name>/ with a training.json beside them.

    .venv/bin/python scripts/train_zoo.py [--steps 3000] [--jobs 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import numpy as np
import torch

from worker.corpus import load_photo, random_crops
from worker.models import autoencoder_class, family
from worker.zoo import TRAIN_PHOTOS, ZOO, ZooModel

CROP = 32
BATCH = 32
KL_WEIGHT = 1e-6
STATS_CROPS = 512  # crops the latent statistics are fitted on


def gaussian_kl(posterior) -> torch.Tensor:
    """KL(q(z|x) ‖ N(0, I)) summed over every latent element, mean over the batch: the same
    for 4-D and 5-D latents (diffusers' `.kl()` sums over dims 1–3 only)."""
    terms = posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar
    return 0.5 * terms.flatten(1).sum(dim=1).mean()


def training_step(member: ZooModel, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction MSE, total loss) of one batch x (N, 3, H, W) in [−1, 1]."""
    fam = family(member.kind)
    inp = x.unsqueeze(2) if fam.frames else x
    encoded = model.encode(inp)
    regulariser = torch.zeros(())
    if fam.latent == "mode":
        posterior = encoded.latent_dist
        out = model.decode(posterior.sample())
        regulariser = KL_WEIGHT * gaussian_kl(posterior)
    elif member.kind == "vq":
        out = model.decode(encoded.latents)
        regulariser = out.commit_loss.mean()
    else:
        out = model.decode(getattr(encoded, fam.latent))
    recon = out.sample[:, :, 0] if fam.frames else out.sample
    loss = torch.mean((recon - x) ** 2)
    return loss, loss + regulariser


@torch.no_grad()
def fit_latent_statistics(member: ZooModel, model: torch.nn.Module, photos: list[np.ndarray]) -> dict:
    """The latent normalisation the family's pipeline applies, fitted on training crops."""
    from worker.models import from_module

    rng = np.random.default_rng([member.seed, 7])
    crops = random_crops(photos, STATS_CROPS, CROP, rng)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1
    adapter = from_module(model, member.kind, channels_last=False)
    z = torch.cat([adapter.encode(chunk) for chunk in x.split(64)])
    if member.kind == "flux2":  # pipeline_flux2.py: 2×2 patchify, then the batch-norm statistics
        b, c, h, w = z.shape
        p = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        model.bn.running_mean.copy_(p.mean(dim=(0, 2, 3)))
        model.bn.running_var.copy_(p.var(dim=(0, 2, 3)))
        return {"bn_running_mean": model.bn.running_mean.tolist(), "bn_running_var": model.bn.running_var.tolist()}
    if member.kind in ("qwenimage", "qwenimage21", "wan"):
        stats = {"latents_mean": [round(float(v), 4) for v in z.mean(dim=(0, 2, 3))],
                 "latents_std": [round(float(v), 4) for v in z.std(dim=(0, 2, 3))]}
        model.register_to_config(**stats)
        return stats
    if member.kind in ("dc", "hunyuanimage"):  # SANA: scaling_factor = 1 / std of the latents
        stats = {"scaling_factor": round(1.0 / float(z.std()), 4)}
        model.register_to_config(**stats)
        return stats
    return {}


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
        loss, total = training_step(member, model, x)
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        schedule.step()
        recent = (recent + [loss.item()])[-100:]
        if step % 250 == 0 or step == steps - 1:
            print(f"{member.name}: step {step:5d} mse {np.mean(recent):.5f}", flush=True)
    model.eval()
    latent_statistics = fit_latent_statistics(member, model, photos)
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
    if latent_statistics:
        record["latent_statistics"] = "fitted on %d training crops (see config.json / bn buffers)" % STATS_CROPS
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
