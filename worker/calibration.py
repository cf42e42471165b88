"""Thresholds, and the record that travels with them.

Two ways to set a model's threshold τ on its score (worker.methods):
- the paper's: the (1 − α) quantile of a Gaussian KDE of the model's own scores (METHOD.md);
  α bounds how many of the model's own images are missed, and says nothing about anyone else's;
- a false-alert target B: τ is set on negatives (images the model did not make) so that at most
  a fraction B of them is attributed (`false_alert_threshold`), with the rate measured and its
  95 % Clopper–Pearson interval recorded. `watchlist_thresholds` sets every model of a watchlist
  together, so that B holds for the union (an upload alerts when *any* model matches).

Pure numpy/scipy: score arrays in, numbers out. A `Calibration` is the record that travels with
a threshold (model, autoencoder family, exact weights hash, preprocessing, method, α or B, τ, n)
and is refused for any other family, weights or preprocessing, because a threshold means nothing
outside the setting it was fitted in. The family is its own field, not part of the preprocessing:
records written before it existed have none and are checked on weights and preprocessing only.
"""

from __future__ import annotations

import hashlib
import json
import math
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


def method_alpha_threshold(own: Sequence[float], alpha: float, method: str = "aedr") -> float:
    """τ at 1 − α of the model's own scores. The paper's t' takes the KDE as METHOD.md says;
    the fused score (odds, spread over orders of magnitude) takes it on log scores."""
    if method == "aedr":
        return kde_threshold(own, alpha)
    return float(np.exp(kde_threshold(np.log(np.asarray(own, dtype=np.float64)), alpha)))


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


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided Clopper–Pearson interval of a binomial proportion k/n (exact; ends are 0
    and 1 at k = 0 and k = n)."""
    from scipy.stats import beta

    if n < 1 or not 0 <= k <= n:
        raise CalibrationError(f"Clopper–Pearson needs 0 ≤ k ≤ n and n ≥ 1, got k={k}, n={n}")
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1.0 - tail, k + 1, n - k))
    return low, high


def negatives_needed(target: float, confidence: float = 0.95) -> int:
    """The fewest negatives that can support a false-alert target: with n negatives and none
    attributed, the upper end of the 95 % Clopper–Pearson interval is 1 − 0.025^(1/n); it must
    be ≤ the target (about 3.7 / target negatives)."""
    if not 0.0 < target < 1.0:
        raise CalibrationError(f"the false-alert target must be in (0, 1), got {target}")
    tail = (1.0 - confidence) / 2.0
    return int(math.ceil(math.log(tail) / math.log1p(-target)))


def check_target_supported(target: float, n_negatives: int) -> None:
    """Refuse a false-alert target that `n_negatives` cannot demonstrate (`negatives_needed`)."""
    needed = negatives_needed(target)
    if n_negatives < needed:
        raise CalibrationError(
            f"--max-false-alerts {target:g} needs at least {needed} negatives (with none attributed, the 95 % "
            f"Clopper–Pearson upper bound must be ≤ {target:g}); got {n_negatives}: add negatives or raise the target"
        )


def allowed_false_alerts(target: float, n: int) -> int:
    """How many of n calibration negatives may be attributed: the largest m with
    (m + 1)/(n + 1) ≤ target. With τ at the (m+1)-th smallest negative score, a new negative
    exchangeable with these is attributed with probability at most (m + 1)/(n + 1) ≤ target
    (the conformal bound), and m/n ≤ target on the calibration negatives themselves. −1 means
    even τ below every negative would not meet it."""
    return int(math.floor(target * (n + 1) + 1e-9)) - 1


def false_alert_threshold(negatives: Sequence[float], target: float) -> float:
    """The largest τ that attributes at most `allowed_false_alerts` of the negatives (strict
    score < τ): the (m+1)-th smallest negative score; −inf when no threshold meets it. The
    target must be supported (`check_target_supported`)."""
    values = np.sort(np.asarray(negatives, dtype=np.float64))
    if values.size == 0:
        raise CalibrationError("a false-alert target needs negatives")
    m = allowed_false_alerts(target, values.size)
    if m < 0:
        return float(values[0])  # strict: attributes none of them
    return float(values[m]) if m < values.size else float("inf")


def false_alert_summary(negatives: Sequence[float], threshold: float, target: float | None = None) -> dict[str, Any]:
    """What the calibration JSON records about false alerts at τ."""
    values = np.asarray(negatives, dtype=np.float64)
    k = int(np.sum(attributed(values, threshold)))
    low, high = clopper_pearson(k, int(values.size))
    out = {"n_negatives": int(values.size), "attributed": k, "rate": k / values.size,
           "ci95": [low, high], "upper_bound95": high}
    if target is not None:
        out = {"target": target, **out}
    return out


def recall_summary(own: Sequence[float], threshold: float, source: str) -> dict[str, Any]:
    """Own-image recall at τ with its 95 % Clopper–Pearson interval."""
    values = np.asarray(own, dtype=np.float64)
    k = int(np.sum(attributed(values, threshold)))
    low, high = clopper_pearson(k, int(values.size))
    return {"on": source, "n": int(values.size), "attributed": k, "recall": k / values.size, "ci95": [low, high]}


def watchlist_thresholds(negatives: Sequence[Sequence[float]], target: float) -> tuple[list[float], float]:
    """Thresholds for K models together so that at most a fraction `target` of the negatives
    raise an alert through *any* model (the union), and the per-model level β they share.

    Negative i's scores under the K models are negatives[k][i]. Every model gets the same
    per-model false-alert level β (τ_k = the (m_β+1)-th smallest of model k's negative scores,
    m_β = ⌊β(n+1)⌋ − 1), and β is the largest level whose union attributes at most
    `allowed_false_alerts(target, n)` negatives. The union is monotone in β, so the search
    is a bisection over m. Returns ([τ_k], β).
    """
    matrix = np.asarray(negatives, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise CalibrationError("watchlist thresholds need a K × n matrix of negative scores")
    k_models, n = matrix.shape
    allowed = allowed_false_alerts(target, n)
    ordered = np.sort(matrix, axis=1)

    def thresholds(m: int) -> np.ndarray:  # τ_k admitting the m smallest negatives of each model
        if m < 0:
            return ordered[:, 0]  # strict: attributes none
        return ordered[:, m] if m < n else np.full(k_models, np.inf)

    def union(m: int) -> int:
        return int(np.sum(np.any(matrix < thresholds(m)[:, None], axis=0)))

    lo, hi = -1, allowed  # union(-1) = 0 ≤ allowed; per-model m above `allowed` can't qualify
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if union(mid) <= allowed:
            lo = mid
        else:
            hi = mid - 1
    return [float(t) for t in thresholds(lo)], (lo + 1) / (n + 1)


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
    # The score the threshold applies to (worker.methods); absent in older files = the paper's.
    method: dict[str, Any] = field(default_factory=lambda: {"name": "aedr", "score": "t' = (L1/L2)·H"})
    # "alpha": τ from the KDE of own scores at 1 − α; "false_alerts": τ from negatives at a target;
    # "watchlist": set together with the other models of a watchlist at one target.
    threshold_rule: str = "alpha"
    false_alerts: dict[str, Any] | None = None  # measured on the negatives at τ (rate, 95 % CI)
    recall: dict[str, Any] | None = None  # own images attributed at τ (validation when given)
    watchlist: dict[str, Any] | None = None  # the joint calibration this one belongs to

    @classmethod
    def fit(
        cls,
        model: str,
        weights_sha256: str,
        preprocessing: dict[str, Any],
        scores: Sequence[float],
        alpha: float = DEFAULT_ALPHA,
        alpha_selection: dict[str, Any] | None = None,
        *,
        method: dict[str, Any] | None = None,
        threshold: float | None = None,
        threshold_rule: str = "alpha",
        false_alerts: dict[str, Any] | None = None,
        recall: dict[str, Any] | None = None,
        watchlist: dict[str, Any] | None = None,
        family: str = "",
    ) -> "Calibration":
        """`scores` are the model's own calibration scores in the method's units. Without an
        explicit `threshold`, τ is the KDE quantile at 1 − α (`method_alpha_threshold`)."""
        values = np.asarray(scores, dtype=np.float64)
        method = method or {"name": "aedr", "score": "t' = (L1/L2)·H"}
        if threshold is None:
            threshold = method_alpha_threshold(values, alpha, method["name"])
        if not np.isfinite(threshold):
            raise CalibrationError("the threshold came out non-finite; add calibration images or negatives")
        return cls(
            model=model,
            weights_sha256=weights_sha256,
            preprocessing=preprocessing,
            preprocessing_sha256=preprocessing_sha256(preprocessing),
            alpha=float(alpha),
            threshold=float(threshold),
            n=int(values.size),
            alpha_selection=alpha_selection,
            method=method,
            threshold_rule=threshold_rule,
            false_alerts=false_alerts,
            recall=recall,
            watchlist=watchlist,
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
        from .methods import Method, MethodError

        try:
            Method.from_record(record.method)
        except MethodError as exc:
            raise CalibrationError(f"calibration file {path}: {exc}") from None
        return record

    @property
    def scorer(self):
        """The score method this threshold applies to (worker.methods.Method)."""
        from .methods import Method

        return Method.from_record(self.method)

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
