"""`aedr score` and `aedr calibrate` on a tiny saved model of every family, and the one-line
error for a class the adapter does not know."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAMILY, TINY_CONFIGS, build_module, random_images
from worker.cli import main
from worker.models import FAMILIES, load_autoencoder
from worker.scoring import score_images


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    """Own images (12, 40×48: every family's factor divides 8) and three to score (one odd-sized)."""
    root = tmp_path_factory.mktemp("images")
    own, probe = root / "own", root / "probe"
    own.mkdir()
    probe.mkdir()
    for i, im in enumerate(random_images(12, 40, 48, seed=11)):
        Image.fromarray(im).save(own / f"{i:02d}.png")
    for i, im in enumerate(random_images(2, 40, 48, seed=12) + random_images(1, 37, 53, seed=13)):
        Image.fromarray(im).save(probe / f"p{i}.png")
    return own, probe


def _records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("variant", list(TINY_CONFIGS))
def test_calibrate_then_score_every_family(tmp_path, image_dirs, capsys, variant):
    own, probe = image_dirs
    model_dir = tmp_path / variant
    build_module(variant, seed=21).save_pretrained(model_dir)
    cal = tmp_path / "cal.json"
    assert main(["calibrate", "--model", str(model_dir), "--images", str(own), "--alpha", "0.1",
                 "--out", str(cal), "--device", "cpu", "--quiet"]) == 0
    record = json.loads(cal.read_text())
    assert record["family"] == FAMILY[variant] and record["n"] == 12 and record["alpha"] == 0.1
    capsys.readouterr()

    outputs = []
    for _ in range(2):
        code = main(["score", "--model", str(model_dir), "--calibration", str(cal), "--device", "cpu",
                     "--batch-size", "2", str(probe)])
        outputs.append(capsys.readouterr().out)
        assert code == 0
    assert outputs[0] == outputs[1]  # deterministic, byte for byte
    records = _records(outputs[0])
    assert [r["image"].rsplit("/", 1)[1] for r in records] == ["p0.png", "p1.png", "p2.png"]

    # The same numbers as the core on the same pixels, and the calibration's verdicts.
    model = load_autoencoder(str(model_dir), device="cpu")
    pixels = [np.asarray(Image.open(probe / f"p{i}.png").convert("RGB")) for i in range(3)]
    for r, want in zip(records, score_images(model, pixels)):
        assert r["score"] == pytest.approx(want.score, rel=1e-6)
        assert r["loss1"] == pytest.approx(want.loss1, rel=1e-6)
        assert r["threshold"] == record["threshold"]
        assert r["belongs"] == (r["score"] < record["threshold"])


def test_a_calibration_of_one_family_is_refused_for_another(tmp_path, image_dirs, capsys):
    own, probe = image_dirs
    build_module("dc", seed=1).save_pretrained(tmp_path / "dc")
    build_module("flux2", seed=1).save_pretrained(tmp_path / "flux2")
    assert main(["calibrate", "--model", str(tmp_path / "dc"), "--images", str(own), "--out",
                 str(tmp_path / "dc.json"), "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    code = main(["score", "--model", str(tmp_path / "flux2"), "--calibration", str(tmp_path / "dc.json"),
                 "--device", "cpu", str(probe)])
    assert code == 2 and "matches none of the loaded models' weights" in capsys.readouterr().err


@pytest.mark.parametrize("command, class_name", [("score", "AutoencoderKLCogVideoX"), ("calibrate", "UNet2DModel")])
def test_unknown_family_is_one_error_line_and_exit_2(tmp_path, image_dirs, command, class_name):
    own, probe = image_dirs
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"_class_name": class_name, "in_channels": 3}))
    args = {"score": ["score", "--model", str(tmp_path / "m"), str(probe)],
            "calibrate": ["calibrate", "--model", str(tmp_path / "m"), "--images", str(own),
                          "--out", str(tmp_path / "c.json")]}[command]
    result = subprocess.run([sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True,
                            timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aedr: error: model ")
    assert f"config class '{class_name}' is not a supported autoencoder" in lines[0]
    assert all(f"{f.class_name} ({f.kind})" in lines[0] for f in FAMILIES)
    assert not (tmp_path / "c.json").exists()


def test_kind_choices_list_every_family(capsys):
    with pytest.raises(SystemExit) as info:
        main(["score", "--model", "x", "--kind", "sdxl", "y"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert all(repr(f.kind) in err for f in FAMILIES)
