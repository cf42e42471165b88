"""Verdicts a moderation team can trust: false-alert thresholds, Clopper–Pearson bounds, the
watchlist-wide target, the fused method, tiles, and `aedr evaluate`'s figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.stats import beta, norm

from tests.conftest import build_module, random_images
from worker.calibration import (
    Calibration,
    CalibrationError,
    allowed_false_alerts,
    check_target_supported,
    clopper_pearson,
    false_alert_summary,
    false_alert_threshold,
    negatives_needed,
    watchlist_thresholds,
)
from worker.cli import main
from worker.decision import Match, decide
from worker.evaluate import report
from worker.methods import FUSED, Method, fit_fused
from worker.models import from_module
from worker.scoring import Scores, crop_box, score_images, tile_boxes
from worker.storage import AttributionRecord

# ------------------------------------------------------------------ Clopper–Pearson


@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (5, 10), (10, 10), (3, 200), (0, 72), (17, 1000)])
def test_clopper_pearson_equals_the_beta_quantiles(k, n):
    low, high = clopper_pearson(k, n)
    want_low = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    want_high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    assert low == pytest.approx(want_low, abs=1e-12) and high == pytest.approx(want_high, abs=1e-12)


def test_clopper_pearson_hand_checked_cases():
    # 0 of 10: the upper end solves (1 − p)^10 = 0.025, p = 1 − 0.025^(1/10) = 0.30850.
    low, high = clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** 0.1, rel=1e-10) and high == pytest.approx(0.30850, abs=1e-5)
    # 10 of 10 mirrors it; 5 of 10 is the textbook interval [0.1871, 0.8129].
    assert clopper_pearson(10, 10)[0] == pytest.approx(0.025 ** 0.1, rel=1e-10)
    assert clopper_pearson(5, 10) == pytest.approx((0.18709, 0.81291), abs=1e-5)
    with pytest.raises(CalibrationError):
        clopper_pearson(3, 2)


# ------------------------------------------------------------------ targets and thresholds


def test_a_target_the_negatives_cannot_support_is_refused():
    # With n negatives and none attributed, the CP upper end is 1 − 0.025^(1/n); it must be ≤ B.
    assert negatives_needed(0.05) == 72 and negatives_needed(0.001) == 3688
    assert clopper_pearson(0, 3688)[1] <= 0.001 < clopper_pearson(0, 3687)[1]
    assert clopper_pearson(0, 72)[1] <= 0.05 < clopper_pearson(0, 71)[1]
    check_target_supported(0.05, 72)
    with pytest.raises(CalibrationError, match="needs at least 72 negatives"):
        check_target_supported(0.05, 71)
    with pytest.raises(CalibrationError, match="needs at least 3688 negatives"):
        check_target_supported(0.001, 100)


def test_false_alert_threshold_on_a_known_sample():
    negatives = np.arange(1, 1000) / 1000.0  # 0.001 … 0.999, n = 999
    assert allowed_false_alerts(0.05, 999) == 49  # (49 + 1)/(999 + 1) = 0.05
    tau = false_alert_threshold(negatives, 0.05)
    assert tau == pytest.approx(0.050)
    summary = false_alert_summary(negatives, tau, 0.05)
    assert summary["attributed"] == 49 and summary["rate"] == pytest.approx(49 / 999) and summary["rate"] <= 0.05
    assert summary["upper_bound95"] == pytest.approx(beta.ppf(0.975, 50, 950))
    # A shuffled sample gives the same τ; the strict rule never admits the τ-valued negative.
    assert false_alert_threshold(np.random.default_rng(0).permutation(negatives), 0.05) == tau


def test_false_alert_threshold_meets_its_target_on_fresh_negatives():
    """Negatives ~ N(0, 1); τ from 199 of them at B = 0.05 is their 10th smallest, whose expected
    rate on new negatives is exactly 10/200 = 0.05 (the conformal bound, attained)."""
    rng = np.random.default_rng(1)
    rates = []
    for _ in range(400):
        tau = false_alert_threshold(rng.normal(size=199), 0.05)
        rates.append(norm.cdf(tau))  # the exact held-out false-alert rate at τ
    assert np.mean(rates) == pytest.approx(0.05, abs=0.004)
    assert np.mean(np.array(rates) > 0.1) < 0.05  # rarely twice the target


def test_watchlist_thresholds_hold_the_target_for_the_union():
    rng = np.random.default_rng(2)
    n = 999
    independent = rng.normal(size=(3, n))
    taus, level = watchlist_thresholds(independent, 0.06)
    union = np.any(independent < np.asarray(taus)[:, None], axis=0)
    allowed = allowed_false_alerts(0.06, n)
    assert union.sum() <= allowed
    # Maximal: one more negative per model would break the target.
    ordered = np.sort(independent, axis=1)
    m = round(level * (n + 1)) - 1
    np.testing.assert_allclose(taus, ordered[:, m])
    assert np.any(independent < ordered[:, m + 1][:, None], axis=0).sum() > allowed
    # Three independent models at one level each admit about a third of the target.
    assert 0.015 < level < 0.025
    # Identical models: the union is one model, so each gets the single-model threshold.
    same = np.vstack([independent[0]] * 3)
    taus_same, _ = watchlist_thresholds(same, 0.06)
    assert taus_same == pytest.approx([false_alert_threshold(independent[0], 0.06)] * 3)


def test_per_model_targets_add_up_and_the_watchlist_target_does_not():
    rng = np.random.default_rng(3)
    negatives = rng.normal(size=(5, 2000))
    each = [false_alert_threshold(row, 0.05) for row in negatives]
    union_each = np.mean(np.any(negatives < np.asarray(each)[:, None], axis=0))
    joint, _ = watchlist_thresholds(negatives, 0.05)
    union_joint = np.mean(np.any(negatives < np.asarray(joint)[:, None], axis=0))
    assert union_each > 0.2  # five models at 5 % each: ~23 % of real uploads alert
    assert union_joint <= 0.05


# ------------------------------------------------------------------ the fused method


def _scores(rng, n, highpass):
    return [Scores(loss1=float(l1), loss2=float(l1 / r), ratio=float(r), homogeneity=0.8, score=float(r * 0.8),
                   highpass1=float(h), highpass2=float(h * 0.9), latent_shift=float(ls), latent_var=1.0)
            for l1, r, h, ls in zip(rng.lognormal(-6, 0.3, n), rng.lognormal(0.3, 0.2, n),
                                    rng.lognormal(highpass, 0.3, n), rng.lognormal(-5, 0.3, n))]


def test_fused_method_separates_what_the_paper_score_cannot(tmp_path):
    rng = np.random.default_rng(4)
    own, negatives = _scores(rng, 120, -9.0), _scores(rng, 120, -7.0)  # same t', other high-pass energy
    fit = fit_fused(own, negatives)
    assert fit.method.name == FUSED and np.all(fit.own_oof > 0)
    # Out-of-fold: every image is scored by a fold model that never saw it; still separated.
    assert np.mean(fit.own_oof[:, None] < fit.negatives_oof[None, :]) > 0.97
    paper = Method.paper()
    assert np.mean(paper.score_many(own)[:, None] < paper.score_many(negatives)[None, :]) < 0.7
    # The record round-trips through a calibration JSON and scores identically.
    cal = Calibration.fit("m", "ab" * 32, {"version": 3}, fit.own_oof, method=dict(fit.method.params),
                          threshold=1.0, threshold_rule="false_alerts")
    cal.save(tmp_path / "c.json")
    again = Calibration.load(tmp_path / "c.json").scorer
    np.testing.assert_allclose(again.score_many(negatives), fit.method.score_many(negatives), rtol=1e-12)
    (tmp_path / "bad.json").write_text(json.dumps({**json.loads((tmp_path / "c.json").read_text()),
                                                   "method": {"name": "magic"}}))
    with pytest.raises(CalibrationError, match="unknown score method"):
        Calibration.load(tmp_path / "bad.json")


def test_a_calibration_without_a_method_is_the_papers():
    cal = Calibration.fit("m", "ab" * 32, {"version": 3}, np.random.default_rng(5).lognormal(0, 0.2, 50))
    s = Scores(loss1=1e-3, loss2=5e-4, ratio=2.0, homogeneity=0.5, score=1.0)
    assert cal.scorer.name == "aedr" and cal.scorer.score(s) == 1.0


# ------------------------------------------------------------------ the decision


def test_decide_alerts_on_any_match_and_names_the_widest_margin():
    rows = [AttributionRecord("a", 0, 0, 0, 0, score=0.9, threshold=1.0, belongs=True),
            AttributionRecord("b", 0, 0, 0, 0, score=1.0, threshold=4.0, belongs=True),
            AttributionRecord("c", 0, 0, 0, 0, score=0.1, threshold=0.05, belongs=False)]
    matches, best = decide(rows)
    assert [m.model for m in matches] == ["a", "b"] and best == Match("b", 1.0, 4.0)
    assert decide(rows[2:]) == ([], None)


# ------------------------------------------------------------------ aedr evaluate's figures


def test_report_equals_a_hand_computed_confusion_matrix():
    p = ([{"truth": "a", "predicted": "a"}] * 8 + [{"truth": "a", "predicted": "b"}] * 1
         + [{"truth": "a", "predicted": None}] * 1 + [{"truth": "b", "predicted": "b"}] * 4
         + [{"truth": "none", "predicted": None}] * 18 + [{"truth": "none", "predicted": "a"}] * 2)
    r = report(p, ["a", "b"])
    assert r["labels"] == ["a", "b", "none"]
    assert r["confusion"] == [[8, 1, 1], [0, 4, 0], [2, 0, 18]]
    assert r["images"] == 34 and r["accuracy"] == pytest.approx(30 / 34)
    assert r["per_model"]["a"] == {"images": 10, "predicted": 10, "correct": 8, "recall": 0.8, "precision": 0.8,
                                   "alerted": 9}
    assert r["per_model"]["b"]["recall"] == 1.0 and r["per_model"]["b"]["precision"] == pytest.approx(0.8)
    assert r["false_alerts"]["alerts"] == 2 and r["false_alerts"]["rate"] == pytest.approx(0.1)
    assert r["false_alerts"]["ci95"] == pytest.approx([beta.ppf(0.025, 2, 19), beta.ppf(0.975, 3, 18)])
    assert r["generated_alert_rate"] == pytest.approx(13 / 14)


# ------------------------------------------------------------------ tiles


def test_tiles_are_aligned_bounded_and_small_images_are_one_tile():
    assert tile_boxes(64, 64, 4, 512) == [crop_box(64, 64, 4, 512)] == [crop_box(64, 64, 4)]
    boxes = tile_boxes(3000, 4000, 8, 512, 4)  # 12 MP: a 5 × 7 grid, four taken
    assert len(boxes) == 4 and len(set(boxes)) == 4
    for b in boxes:
        assert (b.height, b.width) == (512, 512) and b.top % 8 == 0 and b.left % 8 == 0
        assert b.top + b.height <= 3000 and b.left + b.width <= 4000
    assert boxes[0].top < boxes[-1].top and boxes[0].left < boxes[-1].left  # spread corner to corner
    assert len(tile_boxes(700, 1100, 8, 512, 4)) == 2  # 1 × 2 grid: both
    assert tile_boxes(600, 100, 8, 512) == [crop_box(600, 100, 8, 512)]
    assert len(tile_boxes(4000, 4000, 8, None)) == 1  # tile None: the whole aligned image
    assert tile_boxes(4000, 4000, 8, 512, 1) == [crop_box(4000, 4000, 8, 512)]  # one tile: the centred one


def test_a_small_image_scores_the_same_with_and_without_the_tile_policy():
    model = from_module(build_module("kl", seed=1), "kl")
    images = random_images(3, 48, 40, seed=6)
    a = score_images(model, images, tile=512, max_tiles=4)
    b = score_images(model, images, tile=None)
    np.testing.assert_allclose([s.score for s in a], [s.score for s in b], rtol=1e-6)
    # A large image's statistics are the means over its tiles.
    big = random_images(1, 96, 64, seed=7)[0]
    (whole,) = score_images(model, [big], tile=32, max_tiles=6)
    parts = score_images(model, [b.apply(big) for b in tile_boxes(96, 64, 2, 32, 6)], tile=None)
    assert whole.loss1 == pytest.approx(np.mean([p.loss1 for p in parts]), rel=1e-5)
    assert whole.homogeneity == pytest.approx(np.mean([p.homogeneity for p in parts]), rel=1e-12)


# ------------------------------------------------------------------ command-line errors


@pytest.fixture
def tiny_setup(tmp_path):
    model_dir = tmp_path / "vae"
    build_module("kl", seed=4).save_pretrained(model_dir)
    dirs = {}
    for name, n, seed in (("own", 24, 1), ("neg", 100, 2)):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        for i, im in enumerate(random_images(n, 16, 16, seed=seed)):
            Image.fromarray(im).save(dirs[name] / f"{i}.png")
    return model_dir, dirs


def test_calibrate_refuses_an_unsupported_target_in_one_line(tiny_setup, tmp_path, capsys):
    model_dir, dirs = tiny_setup
    code = main(["calibrate", "--model", str(model_dir), "--images", str(dirs["own"]), "--negatives", str(dirs["neg"]),
                 "--max-false-alerts", "0.001", "--out", str(tmp_path / "c.json"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("aedr: error: --max-false-alerts 0.001 needs at least 3688 negatives") and "got 100" in err
    assert not (tmp_path / "c.json").exists()


def test_calibrate_at_a_target_records_rate_bound_and_recall(tiny_setup, tmp_path, capsys):
    model_dir, dirs = tiny_setup
    out = tmp_path / "c.json"
    assert main(["calibrate", "--model", str(model_dir), "--images", str(dirs["own"]), "--negatives", str(dirs["neg"]),
                 "--max-false-alerts", "0.05", "--method", "aedr", "--out", str(out), "--quiet"]) == 0
    cal = json.loads(out.read_text())
    assert cal["threshold_rule"] == "false_alerts" and cal["method"]["name"] == "aedr"
    fa = cal["false_alerts"]
    assert fa["n_negatives"] == 100 and fa["rate"] <= 0.05 and fa["attributed"] == round(fa["rate"] * 100)
    assert fa["upper_bound95"] == pytest.approx(clopper_pearson(fa["attributed"], 100)[1])
    assert cal["recall"]["n"] == 24 and 0 <= cal["recall"]["recall"] <= 1
    assert cal["preprocessing"]["tile"] == 512 and cal["preprocessing"]["max_tiles"] == 4


@pytest.mark.parametrize("args, message", [
    (["--truth", "nobody=DIR"], "'nobody' is not a [[watchlist]] name"),
    (["--truth", "m=/no/such/dir"], "is not a directory"),
    (["--truth", "m"], "expected NAME=DIR"),
])
def test_evaluate_argument_errors_are_one_line_exit_2(tiny_setup, tmp_path, capsys, args, message):
    model_dir, dirs = tiny_setup
    config = tmp_path / "w.toml"
    config.write_text(f'[[watchlist]]\nname = "m"\nmodel = "{model_dir}"\ncalibration = "{tmp_path / "c.json"}"\n')
    args = [a.replace("DIR", str(dirs["own"])) for a in args]
    code = main(["evaluate", "--config", str(config), "--out", str(tmp_path / "r.json"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("aedr: error: ") and message in err


def test_evaluate_with_a_bad_config_is_one_line_exit_2(tmp_path, capsys):
    assert main(["evaluate", "--config", str(tmp_path / "absent.toml"), "--truth", f"none={tmp_path}",
                 "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    (tmp_path / "bad.toml").write_text("[scoring\n")
    assert main(["evaluate", "--config", str(tmp_path / "bad.toml"), "--truth", f"none={tmp_path}",
                 "--out", str(tmp_path / "r.json")]) == 2
    assert capsys.readouterr().err.startswith("aedr: error: config file")


def test_a_missing_required_option_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--out", "r.json"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.count("\n") == 0 and err.startswith("aedr: error: ")


def test_evaluate_end_to_end_counts_unreadable_files_and_its_figures_follow_the_predictions(tiny_setup, tmp_path,
                                                                                          capsys):
    model_dir, dirs = tiny_setup
    cal = tmp_path / "m.json"
    assert main(["calibrate", "--model", str(model_dir), "--name", "m", "--images", str(dirs["own"]),
                 "--method", "aedr", "--alpha", "0.3", "--out", str(cal), "--quiet"]) == 0
    (dirs["neg"] / "broken.png").write_bytes(b"not a png")
    config = tmp_path / "w.toml"
    config.write_text(f'[scoring]\ndevice = "cpu"\n[[watchlist]]\nname = "m"\nmodel = "{model_dir}"\n'
                      f'calibration = "{cal}"\n')
    out, pred, png, md = (tmp_path / n for n in ("r.json", "p.jsonl", "c.png", "r.md"))
    assert main(["evaluate", "--config", str(config), "--truth", f"m={dirs['own']}", "--truth", f"none={dirs['neg']}",
                 "--out", str(out), "--predictions", str(pred), "--plot", str(png), "--markdown", str(md),
                 "--quiet"]) == 0
    result = json.loads(out.read_text())
    lines = [json.loads(line) for line in pred.read_text().splitlines()]
    assert len(lines) == 24 + 100 and result["images"] == 124
    assert result["unreadable"]["count"] == 1 and result["unreadable"]["files"][0]["error"].startswith("decode:")
    assert report(lines, ["m"])["confusion"] == result["confusion"]
    # The matches are every model that passed, with the numbers the decision used.
    for p in lines:
        assert (p["predicted"] == "m") == bool(p["matches"])
        assert all(m["score"] < m["threshold"] for m in p["matches"])
    threshold = json.loads(cal.read_text())["threshold"]
    own_hits = sum(p["predicted"] == "m" for p in lines if p["truth"] == "m")
    assert result["per_model"]["m"]["recall"] == own_hits / 24 and 0 < own_hits < 24  # α = 0.3: some missed
    assert all(m["threshold"] == threshold for p in lines for m in p["matches"])
    assert Image.open(png).size[0] > 300 and "| truth \\ predicted |" in md.read_text()


def test_a_fused_calibration_from_other_statistics_is_refused(tmp_path):
    rng = np.random.default_rng(8)
    fit = fit_fused(_scores(rng, 30, -9.0), _scores(rng, 30, -7.0))
    record = {**fit.method.params, "statistics_version": 99}
    with pytest.raises(Exception, match="statistics version 99"):
        Method.from_record(record)
