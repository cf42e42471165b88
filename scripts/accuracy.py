"""The paper's Table 1 and Table 2 on the mini zoo → docs/ACCURACY.md.

For every zoo model m, thresholds are fitted on m's calibration images (KDE, 1 − α), then:
- Table 1: balanced accuracy of m's test images vs the other zoo models' test images;
- Table 2: balanced accuracy of m's test images vs real photo crops;
for AEDR (t' = L1/L2 · H), the ratio without uniformity calibration (t = L1/L2), and the
single-reconstruction baseline (L1 alone), all with the same KDE threshold procedure. A fourth
column gives AEDR with α selected on a validation split (own validation images vs real crops).

    .venv/bin/python scripts/make_sets.py --out data/sets
    .venv/bin/python scripts/accuracy.py --sets data/sets --out docs/ACCURACY.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from worker.calibration import balanced_accuracy, kde_threshold, select_alpha
from worker.models import load_autoencoder
from worker.offline import iter_image_paths, load_file, score_one_model
from worker.zoo import ZOO

NOTES_MARKER = "<!-- Reading: written by hand, kept when the tables above are regenerated. -->"
METHODS = {"AEDR (t·H)": "score", "ratio t (no H)": "ratio", "L1 only": "loss1"}


def score_set(model, directory: Path) -> dict[str, np.ndarray]:
    images = [load_file(p).image for p in iter_image_paths([directory])]
    results = score_one_model(model, images, batch_size=16, tile=None)
    return {k: np.array([getattr(r, k) for r in results]) for k in ("score", "ratio", "loss1")}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"


def fmt(x: float) -> str:
    return f"{100 * x:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="data/sets")
    parser.add_argument("--out", default="docs/ACCURACY.md")
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    sets = Path(args.sets)
    started = time.perf_counter()
    names = [m.name for m in ZOO]
    table1: dict[str, dict[str, float]] = {}
    table2: dict[str, dict[str, float]] = {}
    attribution = {}  # (model, source) -> fraction of source's test images attributed to model
    details = {}
    for member in ZOO:
        model = load_autoencoder(str(member.path), name=member.name)
        s = {src: score_set(model, sets / src / "test") for src in names + ["real"]}
        calib = score_set(model, sets / member.name / "calibration")
        val = score_set(model, sets / member.name / "validation")
        real_val = score_set(model, sets / "real" / "validation")
        own = s[member.name]
        others = {k: np.concatenate([s[o][k] for o in names if o != member.name]) for k in own}
        table1[member.name], table2[member.name] = {}, {}
        for label, key in METHODS.items():
            tau = kde_threshold(calib[key], args.alpha)
            table1[member.name][label] = balanced_accuracy(own[key], others[key], tau)
            table2[member.name][label] = balanced_accuracy(own[key], s["real"][key], tau)
            if key == "score":
                for src in names + ["real"]:
                    attribution[(member.name, src)] = float(np.mean(s[src]["score"] < tau))
                details[member.name] = (tau, float(np.median(own["score"])), float(np.median(s["real"]["score"])))
        alpha, tau, _ = select_alpha(calib["score"], val["score"], real_val["score"])
        label = "AEDR, α selected"
        table1[member.name][label] = balanced_accuracy(own["score"], others["score"], tau)
        table2[member.name][label] = balanced_accuracy(own["score"], s["real"]["score"], tau)
        details[member.name] += (alpha,)
        print(f"{member.name}: done", flush=True)
    seconds = time.perf_counter() - started
    count = lambda d: len(list(iter_image_paths([sets / d])))  # noqa: E731
    n_cal, n_val, n_test = (count(f"{names[0]}/{s}") for s in ("calibration", "validation", "test"))
    n_real_val, n_real_test = count("real/validation"), count("real/test")

    labels = list(METHODS) + ["AEDR, α selected"]
    lines = [
        "# Attribution accuracy on the mini zoo",
        "",
        "The paper's Table 1 (a model's own images vs other models' images) and Table 2 (own images",
        f"vs real photographs), measured on the project's mini zoo (worker/zoo: {len(names)} tiny autoencoders",
        "trained here; no real SD/FLUX weights can be downloaded on this machine). Figures are",
        "balanced accuracy in %, (TPR on own + TNR on the negatives) / 2. The zoo's models are tiny",
        "and their \"generated\" images are decoder outputs of perturbed latents (scripts/make_sets.py),",
        "so these numbers test the method and this implementation, not real generators.",
        "",
        "Made with:",
        "",
        "```",
        ".venv/bin/python scripts/make_sets.py --out data/sets",
        f".venv/bin/python scripts/accuracy.py --sets {args.sets} --out {args.out} --alpha {args.alpha:g}",
        "```",
        "",
        f"Machine: {machine()}. Date: {datetime.now(timezone.utc):%Y-%m-%d}. Run time: {seconds:.0f} s.",
        "",
        f"Thresholds: KDE at 1 − α (α = {args.alpha:g}) on {n_cal} calibration images per model. Test sets:",
        f"{n_test} own images per model, {n_test * (len(names) - 1)} other-model images (the {len(names) - 1} others), "
        f"{n_real_test} real crops, all",
        f"64×64 PNG. \"α selected\" picks α on {n_val} own validation images vs {n_real_val} real validation crops.",
        "",
    ]
    for title, table in (("Table 1: own images vs other models' images", table1),
                         ("Table 2: own images vs real photographs", table2)):
        lines += [f"## {title}", "", "| model | " + " | ".join(labels) + " |",
                  "|---|" + "---:|" * len(labels)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(fmt(table[name][l]) for l in labels) + " |")
        lines.append("| **mean** | " + " | ".join(fmt(np.mean([table[n][l] for n in names])) for l in labels) + " |")
        lines.append("")
    lines += [
        "## Who gets attributed to whom (AEDR, α fixed)",
        "",
        "Row: the model whose threshold is applied; column: where the test images came from; cell:",
        "% of those images attributed to the row's model (the diagonal is the true-positive rate).",
        "",
        "| model \\ source | " + " | ".join(names + ["real"]) + " |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(fmt(attribution[(name, src)]) for src in names + ["real"]) + " |")
    lines += [
        "",
        "| model | τ (α fixed) | median t' own | median t' real | α selected |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        tau, own_med, real_med, alpha = details[name]
        lines.append(f"| {name} | {tau:.4g} | {own_med:.4g} | {real_med:.4g} | {alpha:g} |")
    lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    notes = out.read_text().split(NOTES_MARKER, 1)[1] if out.exists() and NOTES_MARKER in out.read_text() else "\n"
    out.write_text("\n".join(lines) + "\n" + NOTES_MARKER + notes)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
