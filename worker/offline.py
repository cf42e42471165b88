"""Offline use of the scoring core on files: `aedr score`, `aedr calibrate` and
`aedr calibrate-watchlist`.

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

from .calibration import (
    Calibration,
    CalibrationError,
    check_target_supported,
    false_alert_summary,
    false_alert_threshold,
    method_alpha_threshold,
    recall_summary,
    select_alpha,
    watchlist_thresholds,
)
from .decision import belongs
from .config import ImageSettings
from .images import ImageError, decode_image
from .methods import AEDR, FUSED, Method, fit_fused
from .models import Autoencoder
from .provenance_step import Findings, Provenance
from .scoring import DEFAULT_MAX_TILES, ImageTooSmall, Scores, cut_tiles, pixel_budget, preprocessing_spec, score_tiles

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
    model: Autoencoder, images: Sequence[np.ndarray], batch_size: int, tile: int | None,
    max_tiles: int | None = DEFAULT_MAX_TILES,
) -> list[Scores | str]:
    """Scores per image, or an error string for an image too small for this model."""
    tiles: list[list[np.ndarray]] = []
    slots: list[int] = []
    out: list[Scores | str] = ["" for _ in images]
    for i, image in enumerate(images):
        try:
            tiles.append(cut_tiles(image, model.spatial_factor, tile, max_tiles))
            slots.append(i)
        except ImageTooSmall as exc:
            out[i] = f"too_small: {exc}"
    for i, scores in zip(slots, score_tiles(model, tiles, batch_size, pixel_budget(model.device))):
        out[i] = scores
    return out


def score_records(
    paths: Iterable[Path | tuple[Path, str]],
    models: Sequence[tuple[Autoencoder, Calibration | None]],
    batch_size: int = 16,
    tile: int | None = None,
    chunk: int = 256,
    max_tiles: int | None = DEFAULT_MAX_TILES,
    provenance: Provenance | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per (image, model), or one error record per unreadable image (a `(path,
    error)` pair among `paths` is passed through as an error record). `score` and `threshold`
    are the calibration's method's (the paper's t' without a calibration); the paper's t' is
    always there as `t_prime`. With `provenance`, one more record per image whose file carries
    provenance signals or could not be read for them: {"image", "kind": "provenance",
    "alerting", "evidence", "errors", "scoring_skipped"} (the alert's provenance section; here
    the models always score)."""
    for group in _chunks(paths, chunk):
        loaded = [Loaded(p[0], error=p[1]) if isinstance(p, tuple) else load_file(p, provenance=provenance)
                  for p in group]
        good = [item for item in loaded if item.image is not None]
        per_model = [
            score_one_model(model, [item.image for item in good], batch_size, tile, max_tiles)  # type: ignore[misc]
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
                method = calibration.scorer if calibration else Method.paper()
                score = method.score(result)
                yield {
                    "image": str(item.path),
                    "model": model.name,
                    **result.as_dict(),
                    "t_prime": result.score,
                    "method": method.name,
                    "score": score,
                    "threshold": threshold,
                    "belongs": None if threshold is None else belongs(score, threshold),
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
    max_tiles: int | None = DEFAULT_MAX_TILES,
) -> list[Scores]:
    """Scores of every readable image under `directory` (unreadable ones skipped with a
    warning on stderr)."""
    from tqdm import tqdm

    def unreadable(path: Path, exc: OSError) -> None:
        raise CalibrationError(f"cannot read directory {path}: {exc.strerror or exc}")

    paths = list(iter_image_paths([directory], unreadable))
    if not paths:
        raise CalibrationError(f"no images (png/jpg/webp/…) under {directory}")
    values: list[Scores] = []
    skipped = 0
    with tqdm(total=len(paths), desc=label or str(directory), unit="img", file=sys.stderr, disable=not progress) as bar:
        for group in _chunks(paths, max(batch_size * 4, 64)):
            loaded = [load_file(p) for p in group]
            images = [item.image for item in loaded if item.image is not None]
            for item in loaded:
                if item.error is not None:
                    skipped += 1
                    print(f"aedr: skipping {item.path}: {item.error}", file=sys.stderr)
            for result in score_one_model(model, images, batch_size, tile, max_tiles):
                if isinstance(result, str):
                    skipped += 1
                else:
                    values.append(result)
            bar.update(len(group))
    if skipped:
        print(f"aedr: {skipped} of {len(paths)} files under {directory} skipped", file=sys.stderr)
    if not values:
        raise CalibrationError(f"no readable images under {directory}")
    return values


def _many(model: Autoencoder, directories: Sequence[str | Path], batch_size: int, tile: int | None,
          max_tiles: int | None, progress: bool, label: str) -> list[Scores]:
    out: list[Scores] = []
    for d in directories:
        out += scores_of_directory(model, d, batch_size, tile, progress, f"{label} {d}", max_tiles)
    return out


# `--method auto` fits the fused method only on at least this many own images and negatives.
AUTO_FUSED_MIN = 20


def resolve_method(method: str, n_own: int, n_negatives: int) -> str:
    """`auto`: the fused method when there are at least AUTO_FUSED_MIN own images and negatives
    to fit it on, else the paper's."""
    if method == "auto":
        return FUSED if min(n_own, n_negatives) >= AUTO_FUSED_MIN else AEDR
    if method == FUSED and not n_negatives:
        raise CalibrationError("--method fused is fitted on negatives: give at least one --negatives directory")
    return method


def _method_scores(own: list[Scores], negatives: list[Scores], method: str) -> tuple[Method, np.ndarray, np.ndarray]:
    """(method, own scores, negative scores) in the method's units; for the fused method the
    scores are out-of-fold, so thresholds are never set on images the fit has seen."""
    if method == FUSED:
        fit = fit_fused(own, negatives)
        return fit.method, fit.own_oof, fit.negatives_oof
    paper = Method.paper()
    return paper, paper.score_many(own), paper.score_many(negatives) if negatives else np.empty(0)


def calibrate(
    model: Autoencoder,
    images: str | Path,
    alpha: float | None,
    validation: str | Path | None,
    negatives: Sequence[str | Path],
    batch_size: int = 16,
    tile: int | None = None,
    progress: bool = True,
    *,
    method: str = "auto",
    max_false_alerts: float | None = None,
    max_tiles: int | None = DEFAULT_MAX_TILES,
) -> tuple[Calibration, dict[str, np.ndarray]]:
    """Fit a model's score method and threshold on its own images (and negatives).

    The threshold: at a false-alert target B when given (τ on the negatives, refused when they
    are too few to show B), else at α selected on a validation set, else at a fixed α."""
    if method == FUSED and not negatives:
        raise CalibrationError("--method fused is fitted on negatives: give at least one --negatives directory")
    if validation is not None and max_false_alerts is None and not negatives:
        raise CalibrationError("--validation needs at least one --negatives directory")
    if max_false_alerts is not None and not negatives:
        raise CalibrationError("--max-false-alerts needs at least one --negatives directory")
    own = scores_of_directory(model, images, batch_size, tile, progress, "calibration", max_tiles)
    neg = _many(model, negatives, batch_size, tile, max_tiles, progress, "negatives")
    if max_false_alerts is not None:
        check_target_supported(max_false_alerts, len(neg))
    fitted, own_s, neg_s = _method_scores(own, neg, resolve_method(method, len(own), len(neg)))
    sets: dict[str, np.ndarray] = {"calibration": own_s}
    if neg:
        sets["negatives"] = neg_s
    if validation is not None:
        sets["validation"] = fitted.score_many(scores_of_directory(model, validation, batch_size, tile, progress,
                                                                  "validation", max_tiles))
    selection = None
    rule = "alpha"
    threshold = None
    if max_false_alerts is not None:
        threshold = false_alert_threshold(neg_s, max_false_alerts)
        rule = "false_alerts"
        # α then records what the threshold costs: the own calibration images it misses.
        alpha = float(np.mean(~(own_s < threshold)))
    elif validation is not None:
        log = fitted.name == FUSED  # the fused score's KDE is taken on log scores
        tr = np.log if log else (lambda v: v)
        alpha, threshold, accuracy = select_alpha(tr(own_s), tr(sets["validation"]), tr(neg_s))
        threshold = float(np.exp(threshold)) if log else threshold
        selection = {
            "method": "max balanced accuracy on validation",
            "balanced_accuracy": accuracy,
            "n_validation": int(sets["validation"].size),
            "n_negatives": int(neg_s.size),
        }
    alpha = 0.05 if alpha is None else alpha
    if threshold is None:
        threshold = method_alpha_threshold(own_s, alpha, fitted.name)
    recall_on = ("validation", sets["validation"]) if validation is not None else (
        "calibration (out-of-fold)" if fitted.name == FUSED else "calibration", own_s)
    calibration = Calibration.fit(
        model=model.name,
        weights_sha256=model.weights_sha256,
        preprocessing=preprocessing_spec(model.spatial_factor, tile, model.dtype, max_tiles),
        scores=own_s,
        alpha=alpha,
        alpha_selection=selection,
        family=model.kind,
        method=dict(fitted.params),
        threshold=threshold,
        threshold_rule=rule,
        false_alerts=false_alert_summary(neg_s, threshold, max_false_alerts) if neg else None,
        recall=recall_summary(recall_on[1], threshold, recall_on[0]),
    )
    return calibration, sets


def calibrate_watchlist(
    models: Sequence[tuple[str, Autoencoder]],
    images: dict[str, str],
    negatives: Sequence[str | Path],
    max_false_alerts: float,
    validation: dict[str, str] | None = None,
    *,
    method: str = "auto",
    batch_size: int = 16,
    tile: int | None = None,
    max_tiles: int | None = DEFAULT_MAX_TILES,
    progress: bool = True,
) -> tuple[list[Calibration], dict[str, Any], list[dict[str, np.ndarray]]]:
    """Calibrate every model of a watchlist together to one false-alert target B.

    `negatives` are images no watched model made (real photos): B bounds the fraction of them
    that raise an alert through *any* model. Each model's fused method (the default) is fitted on
    its own images against these negatives and the other watched models' own images (so that it
    also learns to tell the models apart); then `calibration.watchlist_thresholds` gives every
    model one per-model false-alert level, the largest whose union meets B on the negatives'
    out-of-fold scores. `validation` (own held-out images per model) gives each model's recall.
    Returns the calibrations (watchlist order), the joint record, and each model's score sets
    (for `plot_calibration`)."""
    validation = validation or {}
    names = [name for name, _ in models]
    missing = [n for n in names if n not in images]
    if missing:
        raise CalibrationError(f"--images has no folder for watchlist model(s) {', '.join(missing)}")
    unknown = sorted((set(images) | set(validation)) - set(names))
    if unknown:
        raise CalibrationError(f"--images/--validation name(s) {', '.join(unknown)} are not in the watchlist ({', '.join(names)})")
    if method == FUSED and not negatives:
        raise CalibrationError("--method fused is fitted on negatives: give at least one --negatives directory")
    fits, real_matrix, extra = [], [], []
    for name, model in models:
        own = scores_of_directory(model, images[name], batch_size, tile, progress, f"{name}: own", max_tiles)
        real = _many(model, negatives, batch_size, tile, max_tiles, progress, f"{name}: negatives")
        check_target_supported(max_false_alerts, len(real))
        others = _many(model, [images[o] for o in names if o != name], batch_size, tile, max_tiles, progress,
                       f"{name}: other models")
        fitted, own_s, neg_s = _method_scores(own, real + others, resolve_method(method, len(own), len(real + others)))
        real_s = neg_s[: len(real)]
        val = None
        if name in validation:
            val = fitted.score_many(scores_of_directory(model, validation[name], batch_size, tile, progress,
                                                        f"{name}: validation", max_tiles))
        fits.append((name, model, fitted, own_s, val))
        real_matrix.append(real_s)
        extra.append(len(others))
    if len({len(r) for r in real_matrix}) != 1:
        raise CalibrationError("the negatives are not readable by every model alike; remove unreadable files")
    thresholds, level = watchlist_thresholds(real_matrix, max_false_alerts)
    matrix = np.asarray(real_matrix)
    union_hits = np.any(matrix < np.asarray(thresholds)[:, None], axis=0)
    from .calibration import clopper_pearson

    k, n = int(union_hits.sum()), int(union_hits.size)
    low, high = clopper_pearson(k, n)
    union = {"target": max_false_alerts, "n_negatives": n, "attributed": k, "rate": k / n, "ci95": [low, high],
             "upper_bound95": high}
    joint = {"models": names, "per_model_level": level, "union_false_alerts": union,
             "rule": "one per-model false-alert level for every model, the largest whose union meets the target"}
    calibrations, plots = [], []
    for (name, model, fitted, own_s, val), tau, real_s in zip(fits, thresholds, real_matrix):
        plots.append({"calibration": own_s, "negatives": real_s, **({"validation": val} if val is not None else {})})
        recall_on = ("validation", val) if val is not None else (
            "calibration (out-of-fold)" if fitted.name == FUSED else "calibration", own_s)
        calibrations.append(Calibration.fit(
            model=name, weights_sha256=model.weights_sha256,
            preprocessing=preprocessing_spec(model.spatial_factor, tile, model.dtype, max_tiles),
            scores=own_s, alpha=float(np.mean(~(own_s < tau))), method=dict(fitted.params), threshold=tau,
            threshold_rule="watchlist",
            false_alerts=false_alert_summary(real_s, tau), recall=recall_summary(recall_on[1], tau, recall_on[0]),
            watchlist=joint, family=model.kind,
        ))
    return calibrations, joint, plots


def plot_calibration(calibration: Calibration, sets: dict[str, np.ndarray], path: str | Path) -> None:
    """PNG: the KDE of the model's own scores, the negatives' histogram, and τ (log x axis)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    own = sets["calibration"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    everything = np.concatenate([v for v in sets.values() if v is not None and len(v)])
    positive = bool(np.all(everything > 0))
    lo, hi = everything.min(), everything.max()
    bins = np.geomspace(lo, hi, 60) if positive else np.linspace(lo, hi, 60)
    ax.hist(own, bins=bins, density=True, alpha=0.35, color="tab:blue", label=f"own images (n={own.size})")
    grid = np.geomspace(lo, hi, 2000) if positive else np.linspace(lo, hi, 2000)
    ax.plot(grid, gaussian_kde(own)(grid), color="tab:blue", label="KDE of own scores")
    if sets.get("negatives") is not None and len(sets["negatives"]):
        neg = sets["negatives"]
        ax.hist(neg, bins=bins, density=True, alpha=0.35, color="tab:red", label=f"negatives (n={neg.size})")
    rule = (f"α = {calibration.alpha:g}" if calibration.threshold_rule == "alpha"
            else f"false alerts ≤ {(calibration.false_alerts or {}).get('target', (calibration.watchlist or {}).get('union_false_alerts', {}).get('target'))}")
    ax.axvline(calibration.threshold, color="black", linestyle="--", label=f"τ = {calibration.threshold:.4g} ({rule})")
    if positive:
        ax.set_xscale("log")
    ax.set_xlabel("calibrated score t' = (L1/L2)·H" if calibration.method.get("name") == AEDR
                  else f"{calibration.method.get('name')} score (lower = more like the model's own)")
    ax.set_ylabel("density")
    ax.set_title(f"AEDR calibration: {calibration.model}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
