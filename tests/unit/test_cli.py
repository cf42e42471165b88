"""`aedr score` and `aedr calibrate` on any image directory and any diffusers autoencoder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import build_module, random_images
from worker.cli import main
from worker.models import load_autoencoder
from worker.scoring import score_images

KEYS = {"image", "model", "loss1", "loss2", "ratio", "homogeneity", "score", "threshold", "belongs",
        "t_prime", "method", "highpass1", "highpass2", "latent_shift", "latent_var"}


@pytest.fixture
def images_dir(tmp_path):
    d = tmp_path / "images"
    (d / "nested").mkdir(parents=True)
    for i, im in enumerate(random_images(3, 40, 36, seed=1)):
        Image.fromarray(im).save(d / f"p{i}.png")
    Image.fromarray(random_images(1, 48, 48, seed=2)[0]).save(d / "nested" / "photo.jpg", quality=90)
    (d / "broken.png").write_bytes(b"not a png")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    return d


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "vae"
    build_module("kl", seed=4).save_pretrained(path)
    return path


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_score_writes_a_line_per_image_and_model(images_dir, model_dir, capsys):
    code = main(["score", "--model", str(model_dir), "--batch-size", "2", str(images_dir)])
    records = lines(capsys.readouterr().out)
    assert code == 1  # one input failed
    errors = [r for r in records if "error" in r]
    assert [r["image"].rsplit("/", 1)[1] for r in errors] == ["broken.png"]
    scored = [r for r in records if "error" not in r]
    assert len(scored) == 4 and all(set(r) == KEYS for r in scored)
    assert all(r["threshold"] is None and r["belongs"] is None for r in scored)
    assert all(r["method"] == "aedr" and r["score"] == r["t_prime"] for r in scored)  # no calibration: the paper's t'
    # The numbers are the core's numbers for the same pixels.
    model = load_autoencoder(str(model_dir), device="cpu")
    p0 = next(r for r in scored if r["image"].endswith("p0.png"))
    want = score_images(model, [np.asarray(Image.open(images_dir / "p0.png").convert("RGB"))])[0]
    assert p0["score"] == pytest.approx(want.score, rel=1e-5)


def test_calibrate_then_score_with_the_calibration(images_dir, model_dir, tmp_path, capsys):
    own = tmp_path / "own"
    own.mkdir()
    for i, im in enumerate(random_images(12, 32, 32, seed=7)):
        Image.fromarray(im).save(own / f"{i}.png")
    out, plot = tmp_path / "cal.json", tmp_path / "cal.png"
    code = main(["calibrate", "--model", str(model_dir), "--images", str(own), "--alpha", "0.1",
                 "--out", str(out), "--plot", str(plot), "--negatives", str(images_dir), "--quiet"])
    assert code == 0
    cal = json.loads(out.read_text())
    assert {"model", "weights_sha256", "preprocessing", "alpha", "threshold", "n"} <= set(cal)
    assert cal["n"] == 12 and cal["alpha"] == 0.1
    assert plot.stat().st_size > 10_000 and Image.open(plot).size[0] > 400
    capsys.readouterr()
    code = main(["score", "--model", str(model_dir), "--calibration", str(out), str(images_dir / "p0.png")])
    (record,) = lines(capsys.readouterr().out)
    assert code == 0
    assert record["threshold"] == cal["threshold"]
    assert record["belongs"] == (record["score"] < cal["threshold"])


def test_calibrate_selects_alpha_on_validation(model_dir, tmp_path, capsys):
    dirs = {}
    for name, seed in (("own", 1), ("val", 2), ("neg", 3)):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        for i, im in enumerate(random_images(10, 32, 32, seed=seed)):
            Image.fromarray(im).save(dirs[name] / f"{i}.png")
    out = tmp_path / "cal.json"
    code = main(["calibrate", "--model", str(model_dir), "--images", str(dirs["own"]), "--validation", str(dirs["val"]),
                 "--negatives", str(dirs["neg"]), "--out", str(out), "--quiet"])
    cal = json.loads(out.read_text())
    assert code == 0 and cal["alpha_selection"]["n_validation"] == 10 and 0 < cal["alpha"] <= 0.2


def test_a_calibration_for_other_weights_is_refused(images_dir, model_dir, tmp_path, capsys):
    other = tmp_path / "other"
    build_module("kl", seed=99).save_pretrained(other)
    own = tmp_path / "own"
    own.mkdir()
    for i, im in enumerate(random_images(5, 32, 32, seed=3)):
        Image.fromarray(im).save(own / f"{i}.png")
    main(["calibrate", "--model", str(other), "--images", str(own), "--out", str(tmp_path / "c.json"), "--quiet"])
    code = main(["score", "--model", str(model_dir), "--calibration", str(tmp_path / "c.json"), str(images_dir)])
    assert code == 2 and "matches none" in capsys.readouterr().err


def test_bad_tile_is_a_usage_error(images_dir, model_dir, capsys):
    assert main(["score", "--model", str(model_dir), "--tile", "15", str(images_dir)]) == 2
    assert "spatial factor" in capsys.readouterr().err


def test_missing_model_is_one_line_exit_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "score", "--model", str(tmp_path / "absent"), str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("aedr: error: model ") and "does not exist" in result.stderr


def test_a_calibration_fitted_in_fp32_is_refused_for_bf16_weights(model_dir, images_dir, tmp_path, capsys):
    own = tmp_path / "own"
    own.mkdir()
    for i, im in enumerate(random_images(6, 32, 32, seed=8)):
        Image.fromarray(im).save(own / f"{i}.png")
    cal = tmp_path / "fp32.json"
    assert main(["calibrate", "--model", str(model_dir), "--images", str(own), "--out", str(cal), "--quiet"]) == 0
    code = main(["score", "--model", str(model_dir), "--dtype", "bf16", "--calibration", str(cal), str(images_dir)])
    assert code == 2 and "--dtype" in capsys.readouterr().err
