"""Offline use of the scoring core on files: `aedr score` and `aedr calibrate`.

Files are read and decoded here (thin I/O edge); numbers come from `worker.scoring` and
thresholds from `worker.calibration`. Images are processed in chunks so a directory of any size
streams through in bounded memory, and an unreadable file becomes an error record, never a stop.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .calibration import Calibration, CalibrationError, select_alpha
from .decision import belongs
from .config import ImageSettings
from .images import ImageError, decode_image
from .models import Autoencoder
from .provenance_step import Findings, Provenance
from .scoring import ImageTooSmall, Scores, crop_box, pixel_budget, preprocessing_spec, score_crops

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def iter_image_paths(paths: Iterable[str | Path], on_error: Callable[[Path, OSError], None] | None = None
                     ) -> Iterator[Path]:
    """Files as given; directories walked recursively for image suffixes, in sorted order. A
    directory that cannot be read goes to `on_error` (by default: raised), never skipped
    silently."""

    def failed(exc: OSError) -> None:
        if on_error is None:
            raise exc
        on_error(Path(exc.filename or "?"), exc)

    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            yield path
            continue
        for directory, subdirectories, files in os.walk(path, onerror=failed):
            subdirectories.sort()
            for name in sorted(files):
                child = Path(directory) / name
                if child.suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".") and child.is_file():
                    yield child


@dataclass
class Loaded:
    path: Path
    image: np.ndarray | None = None
    error: str | None = None
    provenance: Findings | None = None


def load_file(path: Path, limits: ImageSettings = ImageSettings(), provenance: Provenance | None = None) -> Loaded:
    """Read and decode one file; with `provenance`, read what the file says of its origin too
    (from the bytes and the decoded pixels, as the worker does)."""
    try:
        data = path.read_bytes()
        image = decode_image(data, limits)
        return Loaded(path, image=image, provenance=provenance.inspect(data, image) if provenance else None)
    except ImageError as exc:
        return Loaded(path, error=f"{exc.reason}: {exc}")
    except OSError as exc:
        return Loaded(path, error=f"read: {exc.strerror or exc}")


def _chunks(items: Iterable[Path], size: int) -> Iterator[list[Path]]:
    chunk: list[Path] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score_one_model(
    model: Autoencoder, images: Sequence[np.ndarray], batch_size: int, tile: int | None
) -> list[Scores | str]:
    """Scores per image, or an error string for an image too small for this model."""
    crops: list[np.ndarray] = []
    slots: list[int] = []
    out: list[Scores | str] = ["" for _ in images]
    for i, image in enumerate(images):
        try:
            crops.append(crop_box(image.shape[0], image.shape[1], model.spatial_factor, tile).apply(image))
            slots.append(i)
        except ImageTooSmall as exc:
            out[i] = f"too_small: {exc}"
    for i, scores in zip(slots, score_crops(model, crops, batch_size, pixel_budget(model.device))):
        out[i] = scores
    return out


def score_records(
    paths: Iterable[Path | tuple[Path, str]],
    models: Sequence[tuple[Autoencoder, Calibration | None]],
    batch_size: int = 16,
    tile: int | None = None,
    chunk: int = 256,
    provenance: Provenance | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per (image, model), or one error record per unreadable image (a `(path,
    error)` pair among `paths` is passed through as an error record); with `provenance`, one
    more record per image whose file carries provenance signals or could not be read for them:
    {"image", "kind": "provenance", "alerting", "evidence", "errors", "scoring_skipped"} (the
    alert's provenance section; here the models always score)."""
    for group in _chunks(paths, chunk):
        loaded = [Loaded(p[0], error=p[1]) if isinstance(p, tuple) else load_file(p, provenance=provenance)
                  for p in group]
        good = [item for item in loaded if item.image is not None]
        per_model = [
            score_one_model(model, [item.image for item in good], batch_size, tile)  # type: ignore[misc]
            for model, _ in models
        ]
        good_index = {id(item): k for k, item in enumerate(good)}
        for item in loaded:
            if item.error is not None:
                yield {"image": str(item.path), "error": item.error}
                continue
            k = good_index[id(item)]
            for (model, calibration), results in zip(models, per_model):
                result = results[k]
                if isinstance(result, str):
                    yield {"image": str(item.path), "model": model.name, "error": result}
                    continue
                threshold = calibration.threshold if calibration else None
                yield {
                    "image": str(item.path),
                    "model": model.name,
                    **result.as_dict(),
                    "threshold": threshold,
                    "belongs": None if threshold is None else belongs(result.score, threshold),
                }
            found = item.provenance
            if found is not None and (found.result.signals or found.result.errors):
                yield {"image": str(item.path), "kind": "provenance", **found.section()}


def scores_of_directory(
    model: Autoencoder,
    directory: str | Path,
    batch_size: int,
    tile: int | None,
    progress: bool = True,
    label: str = "",
) -> np.ndarray:
    """Calibrated scores t' of every readable image under `directory` (unreadable ones skipped
    with a warning on stderr)."""
    from tqdm import tqdm

    def unreadable(path: Path, exc: OSError) -> None:
        raise CalibrationError(f"cannot read directory {path}: {exc.strerror or exc}")

    paths = list(iter_image_paths([directory], unreadable))
    if not paths:
        raise CalibrationError(f"no images (png/jpg/webp/…) under {directory}")
    values: list[float] = []
    skipped = 0
    with tqdm(total=len(paths), desc=label or str(directory), unit="img", file=sys.stderr, disable=not progress) as bar:
        for group in _chunks(paths, max(batch_size * 4, 64)):
            loaded = [load_file(p) for p in group]
            images = [item.image for item in loaded if item.image is not None]
            for item in loaded:
                if item.error is not None:
                    skipped += 1
                    print(f"aedr: skipping {item.path}: {item.error}", file=sys.stderr)
            for result in score_one_model(model, images, batch_size, tile):
                if isinstance(result, str):
                    skipped += 1
                else:
                    values.append(result.score)
            bar.update(len(group))
    if skipped:
        print(f"aedr: {skipped} of {len(paths)} files under {directory} skipped", file=sys.stderr)
    return np.asarray(values, dtype=np.float64)


def calibrate(
    model: Autoencoder,
    images: str | Path,
    alpha: float | None,
    validation: str | Path | None,
    negatives: Sequence[str | Path],
    batch_size: int = 16,
    tile: int | None = None,
    progress: bool = True,
) -> tuple[Calibration, dict[str, np.ndarray]]:
    """Fit a model's threshold on its own images; α fixed or selected on a validation set."""
    own = scores_of_directory(model, images, batch_size, tile, progress, "calibration")
    sets: dict[str, np.ndarray] = {"calibration": own}
    selection = None
    if validation is not None:
        if not negatives:
            raise CalibrationError("--validation needs at least one --negatives directory")
        sets["validation"] = scores_of_directory(model, validation, batch_size, tile, progress, "validation")
        sets["negatives"] = np.concatenate(
            [scores_of_directory(model, d, batch_size, tile, progress, f"negatives {d}") for d in negatives]
        )
        alpha, _, accuracy = select_alpha(own, sets["validation"], sets["negatives"])
        selection = {
            "method": "max balanced accuracy on validation",
            "balanced_accuracy": accuracy,
            "n_validation": int(sets["validation"].size),
            "n_negatives": int(sets["negatives"].size),
        }
    elif negatives:
        sets["negatives"] = np.concatenate(
            [scores_of_directory(model, d, batch_size, tile, progress, f"negatives {d}") for d in negatives]
        )
    calibration = Calibration.fit(
        model=model.name,
        weights_sha256=model.weights_sha256,
        preprocessing=preprocessing_spec(model.spatial_factor, tile, model.dtype),
        scores=own,
        alpha=0.05 if alpha is None else alpha,
        alpha_selection=selection,
        family=model.kind,
    )
    return calibration, sets


def plot_calibration(calibration: Calibration, sets: dict[str, np.ndarray], path: str | Path) -> None:
    """PNG: the KDE of the model's own scores, the negatives' histogram, and τ (log x axis)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    own = sets["calibration"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    everything = np.concatenate(list(sets.values()))
    positive = bool(np.all(everything > 0))
    lo, hi = everything.min(), everything.max()
    bins = np.geomspace(lo, hi, 60) if positive else np.linspace(lo, hi, 60)
    ax.hist(own, bins=bins, density=True, alpha=0.35, color="tab:blue", label=f"own images (n={own.size})")
    grid = np.geomspace(lo, hi, 2000) if positive else np.linspace(lo, hi, 2000)
    ax.plot(grid, gaussian_kde(own)(grid), color="tab:blue", label="KDE of own scores")
    if "negatives" in sets:
        neg = sets["negatives"]
        ax.hist(neg, bins=bins, density=True, alpha=0.35, color="tab:red", label=f"negatives (n={neg.size})")
    ax.axvline(calibration.threshold, color="black", linestyle="--",
               label=f"τ = {calibration.threshold:.4g} (α = {calibration.alpha:g})")
    if positive:
        ax.set_xscale("log")
    ax.set_xlabel("calibrated score t' = (L1/L2)·H")
    ax.set_ylabel("density")
    ax.set_title(f"AEDR calibration: {calibration.model}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
