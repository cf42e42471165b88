"""The watchlist: every model an image is checked against, with its threshold. It is the
worker's `Scorer` (worker.scoring_pool), in three parts that run where they fit best:

`prepare` (CPU, any thread, per image): crop for each model and compute its GLCM homogeneity.
`score` (a scoring thread, per batch): double reconstruction per model, batched by shape.
`verdicts` (per image): t' < τ for each model, through `worker.decision`.
Splitting this way keeps the model busy: the next batch can be prepared while this one runs
through the autoencoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .calibration import Calibration, CalibrationError
from .decision import belongs
from .models import Autoencoder, load_autoencoder
from .scoring import Scores, crop_box, homogeneity, pixel_budget, preprocessing_spec, score_crops
from .storage import AttributionRecord, CalibrationRecord


@dataclass(frozen=True)
class WatchedModel:
    name: str
    model: Autoencoder
    calibration: Calibration
    tile: int | None
    mode: str = "alert"  # alert | shadow (an `off` model is never loaded)

    @property
    def threshold(self) -> float:
        return self.calibration.threshold


@dataclass(frozen=True)
class PreparedImage:
    """One image cut for every watched model: crops[k] and homogeneity[k] belong to model k."""

    crops: tuple[np.ndarray, ...]
    homogeneity: tuple[float, ...]


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
             interrupted: Callable[[], bool] = lambda: False) -> "Watchlist":
        """Load every model (but those in mode `off`) and its calibration; refuse thresholds fitted
        on other weights or other preprocessing (the tile comes from the calibration, so it
        always matches).
        Raises `LoadInterrupted` between models once `interrupted()` is true."""
        entries = []
        for entry in settings_watchlist:
            if interrupted():
                raise LoadInterrupted()
            if entry.mode == "off":
                continue
            model = load_autoencoder(
                entry.model, subfolder=entry.subfolder or None, kind=entry.kind or None,
                name=entry.name, device=None if device in (None, "auto") else device, dtype=entry.dtype,
                compile_mode=compile_mode, channels_last=channels_last,
            )
            calibration = Calibration.load(entry.calibration)
            tile = calibration.preprocessing.get("tile")
            calibration.check_matches(model.weights_sha256, preprocessing_spec(model.spatial_factor, tile, model.dtype),
                                     model.kind)
            entries.append(WatchedModel(entry.name, model, calibration, tile, entry.mode))
        budget = pixel_budget(entries[0].model.device) if max_pixels < 0 and entries else (max_pixels or None)
        return cls(entries, batch_size, budget)

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
        """Crop for each model and compute H on exactly the pixels that will be scored.
        Raises `scoring.ImageTooSmall` if some model has no full cell to score."""
        crops, hs = [], []
        cache: dict[tuple[int, int, int, int], tuple[np.ndarray, float]] = {}
        for e in self.entries:
            box = crop_box(image.shape[0], image.shape[1], e.model.spatial_factor, e.tile)
            key = (box.top, box.left, box.height, box.width)
            if key not in cache:
                crop = np.ascontiguousarray(box.apply(image))
                cache[key] = (crop, homogeneity(crop))
            crops.append(cache[key][0])
            hs.append(cache[key][1])
        return PreparedImage(tuple(crops), tuple(hs))

    def score(self, items: Sequence[PreparedImage]) -> list[list[Scores]]:
        """Scores[i][k]: image i against model k."""
        per_model = [
            score_crops(e.model, [item.crops[k] for item in items], self.batch_size, self.max_pixels,
                        [item.homogeneity[k] for item in items])
            for k, e in enumerate(self.entries)
        ]
        return [list(scores) for scores in zip(*per_model)]

    def verdicts(self, scores: Sequence[Scores]) -> tuple[AttributionRecord, ...]:
        """One attribution per model for one image's scores."""
        return tuple(
            AttributionRecord(
                model=e.name, loss1=s.loss1, loss2=s.loss2, ratio=s.ratio, homogeneity=s.homogeneity,
                score=s.score, threshold=e.threshold, belongs=belongs(s.score, e.threshold), mode=e.mode,
                weights_sha256=e.model.weights_sha256, calibration_sha256=e.calibration.sha256,
            )
            for e, s in zip(self.entries, scores)
        )

    def probe(self) -> None:
        """Score one known-good image through every model; raises if any model cannot."""
        yy, xx = np.mgrid[0:64, 0:64]
        image = np.stack([(xx * 4) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256], axis=-1).astype(np.uint8)
        for scores in self.score([self.prepare(image)]):
            if not all(np.isfinite(s.loss1) and np.isfinite(s.loss2) for s in scores):
                raise RuntimeError("the probe image scored NaN or inf")
