"""Score methods: how a model's per-image statistics become the one score its threshold applies to.

Two methods, both training-free at the model (only forward passes of the watched autoencoder):

- `aedr`: the paper's calibrated score t' = (L1/L2)·H, exactly (METHOD.md). Fitted on nothing.
- `fused`: a logistic regression on the logarithms of the statistics that the paper's two passes
  already yield (L1, L2, H, the residuals' high-frequency energies, the latent's shift and
  variance: `FUSED_FEATURES`), fitted on the model's own images against negatives (real photos,
  other models' images). The paper's log t' = log L1 − log L2 + log H is one point of this
  family, so the fit can only move away from it where the calibration data says so.

Every method's score is positive and lower means "more like the model's own images", so one
decision serves all (worker.decision: match iff score < τ; best match = lowest score/τ). The
fused score is the fitted odds that the image is *not* the model's, exp(−logit): score/τ is then
the odds ratio against the threshold's odds, comparable across models.

The fit is cross-fitted: each calibration image also gets an out-of-fold score from a model that
never saw it, and thresholds are chosen on those, not on the scores of images the fit has seen
(which would promise fewer false alerts than new uploads get). The stored coefficients are the
mean of the fold models' (the model is linear, so that is the mean of their logits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import AedrError
from .scoring import STATISTICS_DEFINITION, STATISTICS_VERSION, Scores

AEDR = "aedr"
FUSED = "fused"
METHODS = (AEDR, FUSED)
# The statistics the fused method uses, each through log (docs/ACCURACY.md: what was tried).
FUSED_FEATURES = ("loss1", "loss2", "homogeneity", "highpass1", "highpass2", "latent_shift", "latent_var")
FLOOR = 1e-30  # log of a statistic below this is the log of this
LOGIT_CLIP = 200.0  # |logit| beyond this is this: exp() stays finite
RIDGE = 0.01  # L2 penalty on the standardised coefficients (chosen on the development sets)
FOLDS = 5


class MethodError(AedrError, ValueError):
    """A method cannot be fitted or read."""


def features(scores: Sequence[Scores], names: Sequence[str] = FUSED_FEATURES) -> np.ndarray:
    """(N, F) log-statistics of scored images."""
    rows = [[getattr(s, n) for n in names] for s in scores]
    values = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(names))
    if not np.all(np.isfinite(values)):
        raise MethodError("a statistic the fused method needs is missing (NaN) or infinite")
    return np.log(np.maximum(values, FLOOR))


@dataclass(frozen=True)
class Method:
    """A fitted score method; `params` is what the calibration JSON stores under `method`."""

    name: str
    params: Mapping[str, Any]

    @classmethod
    def paper(cls) -> "Method":
        return cls(AEDR, {"name": AEDR, "score": "t' = (L1/L2)·H"})

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> "Method":
        """The method a calibration JSON names; a calibration without one is the paper's."""
        if not record:
            return cls.paper()
        name = record.get("name")
        if name == AEDR:
            return cls(AEDR, dict(record))
        if name == FUSED:
            needed = ("features", "mean", "scale", "coefficients", "intercept")
            if any(k not in record for k in needed):
                raise MethodError(f"fused method record lacks one of {needed}")
            if not (len(record["features"]) == len(record["mean"]) == len(record["scale"]) == len(record["coefficients"])):
                raise MethodError("fused method record: features, mean, scale and coefficients differ in length")
            unknown = set(record["features"]) - set(Scores.__dataclass_fields__)
            if unknown:
                raise MethodError(f"fused method record names unknown statistics {sorted(unknown)}")
            if record.get("statistics_version", 1) != STATISTICS_VERSION:  # absent: the first version
                raise MethodError(f"fused method fitted on statistics version {record.get('statistics_version')}, "
                                  f"this aedr computes version {STATISTICS_VERSION}; recalibrate")
            return cls(FUSED, dict(record))
        raise MethodError(f"unknown score method {name!r}; known: {', '.join(METHODS)}")

    def score_many(self, scores: Sequence[Scores]) -> np.ndarray:
        """The method's score of each image (positive; lower = more like the model's own)."""
        if self.name == AEDR:
            return np.asarray([s.score for s in scores], dtype=np.float64)
        return np.exp(-np.clip(self.logits(features(scores, self.params["features"])), -LOGIT_CLIP, LOGIT_CLIP))

    def score(self, scores: Scores) -> float:
        return float(self.score_many([scores])[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """log-odds that each row is the model's own image (fused only)."""
        p = self.params
        z = (x - np.asarray(p["mean"])) / np.asarray(p["scale"])
        return z @ np.asarray(p["coefficients"]) + float(p["intercept"])


def _fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, coefficients, intercept) of a class-balanced, ridge-penalised logistic
    regression of y (1 = own) on standardised x."""
    from scipy.optimize import minimize

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    weight = np.where(y == 1, 0.5 / n_pos, 0.5 / n_neg)  # both classes count equally
    sign = np.where(y == 1, 1.0, -1.0)

    def loss(b: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ b
        value = float(np.sum(weight * np.logaddexp(0.0, -sign * s)) + 0.5 * ridge * b[:-1] @ b[:-1])
        p = 0.5 * (1.0 + np.tanh(0.5 * s))  # sigmoid without overflow
        grad = z.T @ (weight * (p - y))
        grad[:-1] += ridge * b[:-1]
        return value, grad

    result = minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B")
    return mean, scale, result.x[:-1], float(result.x[-1])


@dataclass(frozen=True)
class FusedFit:
    method: Method
    own_oof: np.ndarray  # out-of-fold scores of the own images (method's score units)
    negatives_oof: np.ndarray  # out-of-fold scores of the negatives


def fit_fused(own: Sequence[Scores], negatives: Sequence[Scores], *, ridge: float = RIDGE, folds: int = FOLDS,
              seed: int = 0, names: Sequence[str] = FUSED_FEATURES) -> FusedFit:
    """Fit the fused method on own images vs negatives, with out-of-fold scores for both."""
    if len(own) < folds or len(negatives) < folds:
        raise MethodError(f"the fused method needs at least {folds} own images and {folds} negatives "
                          f"(got {len(own)} and {len(negatives)})")
    x = np.vstack([features(own, names), features(negatives, names)])
    y = np.concatenate([np.ones(len(own)), np.zeros(len(negatives))])
    # Stratified folds, deterministic: each class dealt round-robin in a seeded order.
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=int)
    for cls_ in (1.0, 0.0):
        idx = np.flatnonzero(y == cls_)
        fold[rng.permutation(idx)] = np.arange(idx.size) % folds
    oof = np.empty(len(y))
    fitted = []
    for k in range(folds):
        train = fold != k
        mean, scale, coef, intercept = _fit_logistic(x[train], y[train], ridge)
        fitted.append((mean, scale, coef, intercept))
        held = ~train
        oof[held] = ((x[held] - mean) / scale) @ coef + intercept
    # One linear model = the mean of the fold models' logits (each standardises its own way).
    coef_raw = np.mean([c / s for _, s, c, _ in fitted], axis=0)  # coefficients on raw log features
    intercept_raw = float(np.mean([i - (m / s) @ c for m, s, c, i in fitted]))
    mean_all, scale_all = x.mean(axis=0), x.std(axis=0)
    scale_all = np.where(scale_all > 1e-12, scale_all, 1.0)
    params = {
        "name": FUSED,
        "score": "exp(-logit): odds that the image is not the model's; logit = coefficients · (log(stat) - mean)/scale + intercept",
        "features": list(names),
        "statistics_version": STATISTICS_VERSION,
        "statistics": STATISTICS_DEFINITION,
        "transform": "log",
        "mean": [float(v) for v in mean_all],
        "scale": [float(v) for v in scale_all],
        "coefficients": [float(v) for v in coef_raw * scale_all],
        "intercept": float(intercept_raw + (mean_all @ coef_raw)),
        "fit": {"model": "logistic regression, class-balanced", "ridge": ridge, "folds": folds, "seed": seed,
                "n_own": len(own), "n_negatives": len(negatives)},
    }
    method = Method(FUSED, params)
    to_score = lambda logits: np.exp(-np.clip(logits, -LOGIT_CLIP, LOGIT_CLIP))  # noqa: E731
    return FusedFit(method, to_score(oof[: len(own)]), to_score(oof[len(own):]))


def logit_of(score: float) -> float:
    """The fused score's logit back (for reading a threshold as a probability)."""
    return -math.log(score)
