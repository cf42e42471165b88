"""Make the zoo's image sets: each model's "generated" images and held-out real photo crops.

Layout written under --out (default data/sets, not committed; deterministic for a given seed):

    <out>/<model>/calibration/*.png   own images for fitting the threshold
    <out>/<model>/validation/*.png    own images for selecting α
    <out>/<model>/test/*.png          own images for the accuracy report
    <out>/real/validation/*.png       real photo crops (negatives: α selection, false-alert targets)
    <out>/real/test/*.png             real photo crops for the accuracy report

Every image is 8-bit RGB PNG, SIZE×SIZE. Generated images start from crops of photographs the
zoo never trained on (worker.zoo.HELDOUT_PHOTOS); real crops come from the same photographs at
other random positions, so only the decoder's fingerprint tells them apart.

    .venv/bin/python scripts/make_sets.py [--out data/sets] [--size 64] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from worker.corpus import heldout_photos, model_images, real_images
from worker.zoo import ZOO

SPLITS = {"calibration": 150, "validation": 50, "test": 100}
REAL_SPLITS = {"validation": 300, "test": 200}  # 300: enough negatives for a 3 % false-alert target (≥ 122)


def save_all(images: np.ndarray, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(directory / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/sets")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.25)
    args = parser.parse_args()
    out = Path(args.out)
    photos = heldout_photos()
    for k, member in enumerate(ZOO):
        for j, (split, n) in enumerate(SPLITS.items()):
            images = model_images(member.name, n, args.size, seed=[args.seed, k, j], photos=photos, noise=args.noise)
            save_all(images, out / member.name / split)
        print(f"{member.name}: {sum(SPLITS.values())} images")
    for j, (split, n) in enumerate(REAL_SPLITS.items()):
        save_all(real_images(n, args.size, seed=[args.seed, 1000, j], photos=photos), out / "real" / split)
    print(f"real: {sum(REAL_SPLITS.values())} images")


if __name__ == "__main__":
    main()
