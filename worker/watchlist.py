"""The watchlist: every model an image is checked against, with its threshold. It is the
worker's `Scorer` (worker.scoring_pool), in three parts that run where they fit best:

`prepare` (CPU, any thread, per image): cut each model's tiles (at most `max_tiles` of the
  calibration's tile size, worker.scoring.tile_boxes) and compute their GLCM homogeneity.
`score` (a scoring thread, per batch): double reconstruction per model, tiles batched by shape.
`verdicts` (per image): each model's score by its calibration's method (the paper's t' or the
  fused score, worker.methods) against its threshold, through `worker.decision`.
Splitting this way keeps the model busy: the next batch can be prepared while this one runs
through the autoencoders.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .calibration import Calibration, CalibrationError
from .decision import belongs
from .models import Autoencoder, load_autoencoder
from .methods import Method
from .scoring import DEFAULT_MAX_TILES, Scores, homogeneity, pixel_budget, preprocessing_spec, score_tiles, tile_boxes
from .storage import AttributionRecord, CalibrationRecord


@dataclass(frozen=True)
class WatchedModel:
    name: str
    model: Autoencoder
    calibration: Calibration
    tile: int | None
    max_tiles: int | None = DEFAULT_MAX_TILES
    method: Method = field(default_factory=Method.paper)
    mode: str = "alert"  # alert | shadow (an `off` model is never loaded)

    @property
    def threshold(self) -> float:
        return self.calibration.threshold


@dataclass(frozen=True)
class PreparedImage:
    """One image cut for every watched model: crops[k] (its tiles) and homogeneity[k] (their
    mean H) belong to model k."""

    crops: tuple[tuple[np.ndarray, ...], ...]
    homogeneity: tuple[float, ...]


def _files_stamp(model: str, subfolder: str) -> tuple:
    """Size and modification time of a local model directory's files (empty for a hub id): a
    model rewritten in place is loaded again."""
    folder = Path(model).expanduser() / (subfolder or "")
    if not folder.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


class LoadInterrupted(Exception):
    """Loading stopped because the process was asked to stop."""


class Watchlist:
    def __init__(self, entries: Sequence[WatchedModel], batch_size: int = 16, max_pixels: int | None = None):
        if not entries:
            raise CalibrationError("the watchlist is empty: add at least one [[watchlist]] model not in mode 'off'")
        self.entries = tuple(entries)
        self.batch_size = batch_size
        self.max_pixels = max_pixels

    @classmethod
    def load(cls, settings_watchlist, device: str | None, batch_size: int, compile_mode: str = "off",
             channels_last: bool = True, max_pixels: int = -1,
             interrupted: Callable[[], bool] = lambda: False, loaded: dict | None = None) -> "Watchlist":
        """Load every model (but those in mode `off`) and its calibration; refuse thresholds fitted
        on other weights or other preprocessing (the tile comes from the calibration, so it
        always matches).
        Raises `LoadInterrupted` between models once `interrupted()` is true. With `loaded`, a
        model already in it (same name, files, family, dtype and device) is taken from it, and
        every model loaded is put in it: a reload does not load unchanged models again."""
        entries = []
        for entry in settings_watchlist:
            if interrupted():
                raise LoadInterrupted()
            if entry.mode == "off":
                continue
            key = (entry.name, entry.model, entry.subfolder, entry.kind, entry.dtype, device, compile_mode, channels_last,
                   _files_stamp(entry.model, entry.subfolder))
            model = loaded.get(key) if loaded is not None else None
            if model is None:
                model = load_autoencoder(
                    entry.model, subfolder=entry.subfolder or None, kind=entry.kind or None,
                    name=entry.name, device=None if device in (None, "auto") else device, dtype=entry.dtype,
                    compile_mode=compile_mode, channels_last=channels_last,
                )
            if loaded is not None:
                loaded[key] = model
            calibration = Calibration.load(entry.calibration)
            tile = calibration.preprocessing.get("tile")
            max_tiles = calibration.preprocessing.get("max_tiles", DEFAULT_MAX_TILES)
            calibration.check_matches(model.weights_sha256,
                                      preprocessing_spec(model.spatial_factor, tile, model.dtype, max_tiles),
                                      model.kind)
            entries.append(WatchedModel(entry.name, model, calibration, tile, max_tiles, calibration.scorer,
                                        entry.mode))
        budget = pixel_budget(entries[0].model.device) if max_pixels < 0 and entries else (max_pixels or None)
        return cls(entries, batch_size, budget)

    def sibling(self) -> "Watchlist":
        """This watchlist for another scorer on the same device: the same entries, calibrations
        and thresholds (read once, so every scorer judges alike) and shared weights, except a
        model whose module keeps per-call state, which gets a module of its own."""
        return Watchlist([replace(e, model=e.model.for_another_thread()) for e in self.entries],
                         self.batch_size, self.max_pixels)

    def calibration_records(self) -> list[CalibrationRecord]:
        return [
            CalibrationRecord(
                model=e.name, weights_sha256=e.calibration.weights_sha256, alpha=e.calibration.alpha,
                threshold=e.calibration.threshold, n=e.calibration.n,
                preprocessing_sha256=e.calibration.preprocessing_sha256,
                calibrated_at=e.calibration.created_at or "", calibration_sha256=e.calibration.sha256,
            )
            for e in self.entries
        ]

    def prepare(self, image: np.ndarray) -> PreparedImage:
        """Cut each model's tiles and compute H on exactly the pixels that will be scored.
        Raises `scoring.ImageTooSmall` if some model has no full cell to score."""
        crops, hs = [], []
        cache: dict[tuple, tuple[tuple[np.ndarray, ...], float]] = {}
        for e in self.entries:
            boxes = tile_boxes(image.shape[0], image.shape[1], e.model.spatial_factor, e.tile, e.max_tiles)
            key = tuple((b.top, b.left, b.height, b.width) for b in boxes)
            if key not in cache:
                tiles = tuple(np.ascontiguousarray(b.apply(image)) for b in boxes)
                cache[key] = (tiles, float(np.mean([homogeneity(t) for t in tiles])))
            crops.append(cache[key][0])
            hs.append(cache[key][1])
        return PreparedImage(tuple(crops), tuple(hs))

    def score(self, items: Sequence[PreparedImage]) -> list[list[Scores]]:
        """Scores[i][k]: image i against model k."""
        per_model = [
            score_tiles(e.model, [item.crops[k] for item in items], self.batch_size, self.max_pixels,
                        [item.homogeneity[k] for item in items])
            for k, e in enumerate(self.entries)
        ]
        return [list(scores) for scores in zip(*per_model)]

    def verdicts(self, scores: Sequence[Scores]) -> tuple[AttributionRecord, ...]:
        """One attribution per model for one image's scores: `score` is the model's method's
        score (the paper's t' for an `aedr` calibration), `threshold` its threshold."""
        records = []
        for e, s in zip(self.entries, scores):
            score = e.method.score(s)
            records.append(AttributionRecord(
                model=e.name, loss1=s.loss1, loss2=s.loss2, ratio=s.ratio, homogeneity=s.homogeneity,
                score=score, threshold=e.threshold, belongs=belongs(score, e.threshold), mode=e.mode,
                weights_sha256=e.model.weights_sha256, calibration_sha256=e.calibration.sha256,
            ))
        return tuple(records)

    def probe(self) -> None:
        """Score one known-good image through every model; raises if any model cannot."""
        yy, xx = np.mgrid[0:64, 0:64]
        image = np.stack([(xx * 4) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256], axis=-1).astype(np.uint8)
        for scores in self.score([self.prepare(image)]):
            if not all(np.isfinite(s.loss1) and np.isfinite(s.loss2) for s in scores):
                raise RuntimeError("the probe image scored NaN or inf")
