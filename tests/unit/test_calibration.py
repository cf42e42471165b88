"""Thresholds against the reference procedure, re-derived without scipy."""

from __future__ import annotations

import numpy as np
import pytest

from worker.decision import belongs
from worker.calibration import (
    Calibration,
    CalibrationError,
    balanced_accuracy,
    kde_threshold,
    select_alpha,
)


def reference_threshold(values: np.ndarray, alpha: float) -> float:
    """cal_threshold.py's procedure with a hand-written Scott-bandwidth Gaussian KDE."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    sigma = values.std(ddof=1)
    bandwidth = sigma * n ** (-1 / 5)  # Scott's factor for one dimension
    grid = np.linspace(values.min() - sigma, values.max() + sigma, 10_000)
    z = (grid[:, None] - values[None, :]) / bandwidth
    density = np.exp(-0.5 * z**2).sum(axis=1) / (n * bandwidth * np.sqrt(2 * np.pi))
    cdf = np.cumsum(density)
    cdf /= cdf[-1]
    # First grid point where the CDF reaches 1 − α, interpolated against the previous point.
    k = int(np.searchsorted(cdf, 1 - alpha))
    c0, c1, g0, g1 = cdf[k - 1], cdf[k], grid[k - 1], grid[k]
    return float(g0 + (1 - alpha - c0) * (g1 - g0) / (c1 - c0))


FIXED_SETS = {
    "lognormal-500": np.random.default_rng(0).lognormal(0.1, 0.3, 500),
    "normal-100": np.random.default_rng(1).normal(1.0, 0.05, 100),
    "bimodal-300": np.concatenate(
        [np.random.default_rng(2).normal(0.8, 0.02, 200), np.random.default_rng(3).normal(1.3, 0.1, 100)]
    ),
    "few-7": np.array([0.91, 0.95, 1.02, 1.04, 1.1, 1.2, 1.7]),
}


@pytest.mark.parametrize("name", list(FIXED_SETS))
@pytest.mark.parametrize("alpha", [0.003, 0.05, 0.085])
def test_threshold_equals_reference_procedure(name, alpha):
    values = FIXED_SETS[name]
    assert kde_threshold(values, alpha) == pytest.approx(reference_threshold(values, alpha), rel=1e-9)


def test_threshold_of_a_large_normal_sample_is_its_kde_quantile():
    values = np.random.default_rng(7).normal(0.0, 1.0, 20_000)
    bandwidth = values.std(ddof=1) * values.size ** (-1 / 5)
    # The KDE of N(0, 1) data is ≈ N(0, 1 + h²); its 95 % quantile is 1.6449·√(1 + h²).
    assert kde_threshold(values, 0.05) == pytest.approx(1.6449 * np.sqrt(1 + bandwidth**2), abs=0.03)


def test_threshold_grows_as_alpha_shrinks():
    values = FIXED_SETS["lognormal-500"]
    taus = [kde_threshold(values, a) for a in (0.2, 0.1, 0.05, 0.01)]
    assert taus == sorted(taus)


def test_decision_is_strict():
    assert belongs(0.99, 1.0) is True
    assert belongs(1.0, 1.0) is False


@pytest.mark.parametrize(
    "bad, message",
    [([1.0], "at least 2"), ([1.0, 1.0, 1.0], "equal"), ([1.0, float("nan")], "NaN")],
)
def test_unusable_calibration_sets_are_refused(bad, message):
    with pytest.raises(CalibrationError, match=message):
        kde_threshold(bad, 0.05)


def test_balanced_accuracy_by_hand():
    own = [0.5, 0.9, 1.5, 2.0]  # 2 of 4 below τ = 1.0
    neg = [0.8, 3.0, 4.0, 5.0, 1.0]  # 4 of 5 at or above τ (1.0 counts as not belonging)
    assert balanced_accuracy(own, neg, 1.0) == pytest.approx((0.5 + 0.8) / 2)


def test_alpha_selection_maximises_validation_balanced_accuracy():
    rng = np.random.default_rng(4)
    calibration = rng.normal(1.0, 0.1, 300)
    own = rng.normal(1.0, 0.1, 200)
    negatives = rng.normal(1.3, 0.1, 200)  # close negatives: a high τ (small α) costs accuracy
    alpha, tau, accuracy = select_alpha(calibration, own, negatives)
    grid = np.round(np.arange(0.001, 0.2001, 0.001), 3)
    best = max(balanced_accuracy(own, negatives, kde_threshold(calibration, a)) for a in grid)
    assert accuracy == pytest.approx(best)
    assert tau == pytest.approx(kde_threshold(calibration, alpha))
    assert balanced_accuracy(own, negatives, tau) == pytest.approx(accuracy)
    assert alpha > 0.01  # the fixed default would not be chosen blindly: far tail loses here
    assert accuracy > balanced_accuracy(own, negatives, kde_threshold(calibration, 0.001))


def test_calibration_round_trip_and_refusals(tmp_path):
    scores = FIXED_SETS["lognormal-500"]
    pre = {"version": 1, "tile": None, "spatial_factor": 8}
    cal = Calibration.fit("sd15", "ab" * 32, pre, scores, alpha=0.05)
    assert cal.threshold == pytest.approx(kde_threshold(scores, 0.05))
    assert cal.n == 500
    path = tmp_path / "c.json"
    cal.save(path)
    again = Calibration.load(path)
    assert again == cal
    again.check_matches("ab" * 32, dict(pre))
    with pytest.raises(CalibrationError, match="recalibrate"):
        again.check_matches("cd" * 32, pre)
    with pytest.raises(CalibrationError, match="preprocessing"):
        again.check_matches("ab" * 32, {**pre, "tile": 512})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not a valid calibration"):
        Calibration.load(tmp_path / "bad.json")
    with pytest.raises(CalibrationError, match="does not exist"):
        Calibration.load(tmp_path / "missing.json")
