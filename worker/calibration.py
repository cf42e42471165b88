"""Thresholds: the (1 − α) quantile of a Gaussian KDE of a model's own scores (METHOD.md).

Pure numpy/scipy: score arrays in, numbers out. A `Calibration` is the record that travels with
a threshold (model, autoencoder family, exact weights hash, preprocessing, α, τ, n) and is
refused for any other family, weights or preprocessing, because a threshold means nothing
outside the setting it was fitted in. The family is its own field, not part of the
preprocessing (whose hash the shipped calibrations carry): records written before it existed
have none and are checked on weights and preprocessing only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .decision import attributed
from .errors import AedrError

GRID_POINTS = 10_000
DEFAULT_ALPHA = 0.05
# Candidate α for validation-based selection: the paper's optimal values ranged 0.003–0.085.
ALPHA_GRID = tuple(np.round(np.arange(0.001, 0.2001, 0.001), 3))


class CalibrationError(AedrError, ValueError):
    """A calibration cannot be fitted, read, or does not match the model it is used with."""


def kde_cdf(scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(grid, cdf): Scott-bandwidth Gaussian KDE of the scores on a 10 000-point grid over
    [min − σ, max + σ] (σ with ddof=1), cumulative sum normalised to 1."""
    from scipy.stats import gaussian_kde

    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise CalibrationError(f"need at least 2 calibration scores, got {values.size}")
    if not np.all(np.isfinite(values)):
        raise CalibrationError("calibration scores contain NaN or inf")
    sigma = np.std(values, ddof=1)
    if sigma == 0.0:
        raise CalibrationError("all calibration scores are equal; a KDE needs spread")
    grid = np.linspace(values.min() - sigma, values.max() + sigma, GRID_POINTS)
    cdf = np.cumsum(gaussian_kde(values)(grid))
    return grid, cdf / cdf[-1]


def quantile(grid: np.ndarray, cdf: np.ndarray, alpha: float) -> float:
    """τ: the grid value where the CDF reaches 1 − α, linearly interpolated."""
    if not 0.0 < alpha < 1.0:
        raise CalibrationError(f"alpha must be in (0, 1), got {alpha}")
    return float(np.interp(1.0 - alpha, cdf, grid))


def kde_threshold(scores: Sequence[float], alpha: float = DEFAULT_ALPHA) -> float:
    """τ at 1 − α of the KDE of the model's own scores (METHOD.md, cal_threshold.py)."""
    return quantile(*kde_cdf(scores), alpha)


def balanced_accuracy(own: Sequence[float], negatives: Sequence[float], threshold: float) -> float:
    """Mean of the true-positive rate on `own` and the true-negative rate on `negatives`."""
    own_a, neg_a = np.asarray(own, float), np.asarray(negatives, float)
    if own_a.size == 0 or neg_a.size == 0:
        raise CalibrationError("balanced accuracy needs own and negative scores")
    return float((np.mean(attributed(own_a, threshold)) + np.mean(~attributed(neg_a, threshold))) / 2)


def select_alpha(
    calibration: Sequence[float],
    validation_own: Sequence[float],
    validation_negatives: Sequence[float],
    alphas: Sequence[float] = ALPHA_GRID,
) -> tuple[float, float, float]:
    """(α, τ, balanced accuracy) maximising balanced accuracy on a validation set; ties → the
    median tying α (the middle of the plateau, least sensitive to where its edges fall)."""
    grid, cdf = kde_cdf(calibration)
    results = []
    for alpha in alphas:
        tau = quantile(grid, cdf, alpha)
        results.append((alpha, tau, balanced_accuracy(validation_own, validation_negatives, tau)))
    best = max(r[2] for r in results)
    ties = [r for r in results if r[2] == best]
    return ties[len(ties) // 2]


def preprocessing_sha256(preprocessing: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Calibration:
    """A fitted threshold and what it belongs to (the JSON that `aedr calibrate` writes)."""

    model: str
    weights_sha256: str
    preprocessing: dict[str, Any]
    alpha: float
    threshold: float
    n: int
    preprocessing_sha256: str = ""
    alpha_selection: dict[str, Any] | None = None
    score_summary: dict[str, float] = field(default_factory=dict)
    created_at: str = ""
    family: str = ""  # the autoencoder family (worker.models.FAMILIES kind); "" in older records

    @classmethod
    def fit(
        cls,
        model: str,
        weights_sha256: str,
        preprocessing: dict[str, Any],
        scores: Sequence[float],
        alpha: float = DEFAULT_ALPHA,
        alpha_selection: dict[str, Any] | None = None,
        family: str = "",
    ) -> "Calibration":
        values = np.asarray(scores, dtype=np.float64)
        return cls(
            model=model,
            weights_sha256=weights_sha256,
            preprocessing=preprocessing,
            preprocessing_sha256=preprocessing_sha256(preprocessing),
            alpha=float(alpha),
            threshold=kde_threshold(values, alpha),
            n=int(values.size),
            alpha_selection=alpha_selection,
            score_summary={
                "min": float(values.min()),
                "median": float(np.median(values)),
                "max": float(values.max()),
                "std": float(np.std(values, ddof=1)),
            },
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            family=family,
        )

    @property
    def sha256(self) -> str:
        """Identifies this exact calibration (weights, preprocessing, threshold, data): stored
        with every verdict judged under it."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        try:
            raw = json.loads(Path(path).read_text())
            known = {f for f in cls.__dataclass_fields__}
            record = cls(**{k: v for k, v in raw.items() if k in known})
        except FileNotFoundError:
            raise CalibrationError(f"calibration file {path} does not exist") from None
        except OSError as exc:
            raise CalibrationError(f"calibration file {path}: {exc.strerror or exc}") from None
        except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not an object, missing keys
            raise CalibrationError(f"calibration file {path} is not a valid calibration: {exc}") from None
        for name, kinds in (("threshold", (int, float)), ("alpha", (int, float)), ("n", (int,)),
                            ("weights_sha256", (str,)), ("preprocessing", (dict,))):
            value = getattr(record, name)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise CalibrationError(f"calibration file {path}: {name} has the wrong type ({type(value).__name__})")
        if not np.isfinite(record.threshold):
            raise CalibrationError(f"calibration file {path} has a non-finite threshold")
        return record

    def check_matches(self, weights_sha256: str, preprocessing: dict[str, Any], family: str | None = None) -> None:
        """Refuse to apply this threshold to another family, other weights or other preprocessing.
        The family is checked when both sides name one (records older than the field do not)."""
        if self.family and family and family != self.family:
            raise CalibrationError(
                f"calibration for {self.model} was fitted on a {self.family} autoencoder, but the loaded "
                f"model is a {family} autoencoder; recalibrate"
            )
        if weights_sha256 != self.weights_sha256:
            raise CalibrationError(
                f"calibration for {self.model} was fitted on weights {self.weights_sha256[:12]}…, "
                f"but the loaded model's weights are {weights_sha256[:12]}…; recalibrate"
            )
        if preprocessing_sha256(preprocessing) != preprocessing_sha256(self.preprocessing):
            raise CalibrationError(
                f"calibration for {self.model} was fitted with preprocessing {self.preprocessing}, "
                f"not {preprocessing}; use the same --tile and --dtype, or recalibrate"
            )
