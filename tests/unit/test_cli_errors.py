"""Every expected failure of `aedr` is one `aedr: error:` line on stderr with its documented exit
status (README, "Command line"), never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_module
from worker.cli import main
from worker.kafka_io import free_port

REPO = Path(__file__).resolve().parents[2]
ZOO_MODEL = REPO / "worker" / "zoo" / "models" / "kl-f4c4"
ZOO_CALIBRATION = REPO / "worker" / "zoo" / "calibrations" / "kl-f4c4.json"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "vae"
    build_module("kl", seed=4).save_pretrained(path)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("aedr: error: "), err
    assert "Traceback" not in err
    return lines[0]


def calibration_with(tmp_path, **changes) -> str:
    raw = json.loads(ZOO_CALIBRATION.read_text())
    raw.update(changes)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    return str(path)


@pytest.mark.parametrize("argv, status, says", [
    (["score", "--model", "M", "--batch-size", "0", "x.png"], 2, "at least 1"),
    (["score", "--model", "M", "--tile", "abc", "x.png"], 2, "whole number"),
    (["score", "--model", "M", "--device", "cuda:7", "x.png"], 2, "CUDA"),
    (["score", "--model", "M", "--device", "quantum", "x.png"], 2, "not a device"),
    (["score", "--model", "/nonexistent/vae", "x.png"], 2, "does not exist"),
    (["calibrate", "--model", "M", "--images", "I", "--alpha", "2", "--out", "o.json"], 2, "between 0 and 1"),
    (["frobnicate"], 2, "invalid choice"),
    (["serve", "--config", "/nonexistent.toml"], 2, "does not exist"),
    (["db", "upgrade", "--database-url", "not a url"], 2, "not usable"),
    (["db", "upgrade", "--database-url", "postgresql+psycopg2://nobody@127.0.0.1:1/x"], 3, "cannot be reached"),
])
def test_usage_and_configuration_errors(argv, status, says, model_dir, capsys):
    argv = [str(model_dir) if a == "M" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse exits by itself
        code = exc.code
    assert code == status
    assert says in one_error_line(capsys)


@pytest.mark.parametrize("changes, says", [
    ({"threshold": "high"}, "wrong type"),
    ({"threshold": float("nan")}, "non-finite"),
    ({"weights_sha256": None}, "wrong type"),
])
def test_bad_calibrations(changes, says, tmp_path, capsys):
    code = main(["score", "--model", str(ZOO_MODEL), "--calibration", calibration_with(tmp_path, **changes), "x.png"])
    assert code == 2 and says in one_error_line(capsys)


def test_a_config_that_is_a_directory_or_out_of_range(tmp_path, capsys):
    assert main(["serve", "--config", str(tmp_path)]) == 2 and "config file" in one_error_line(capsys)
    bad = tmp_path / "w.toml"
    bad.write_text("[scoring]\nbatch_size = 0\n")
    assert main(["serve", "--config", str(bad)]) == 2 and "scoring.batch_size" in one_error_line(capsys)


def test_an_unreadable_directory_is_an_error_and_the_rest_is_scored(model_dir, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from tests.conftest import random_images

    (tmp_path / "images" / "locked").mkdir(parents=True)
    Image.fromarray(random_images(1, 32, 32)[0]).save(tmp_path / "images" / "ok.png")
    Image.fromarray(random_images(1, 32, 32)[0]).save(tmp_path / "images" / "locked" / "hidden.png")
    real_scandir = os.scandir

    def scandir(path="."):  # as a directory this user may not list (root may list them all)
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code = main(["score", "--model", str(model_dir), str(tmp_path / "images")])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert [r["image"].rsplit("/", 1)[1] for r in records if "error" not in r] == ["ok.png"]
    assert [(r["image"].rsplit("/", 1)[1], r["error"]) for r in records if "error" in r] == [
        ("locked", "read: Permission denied")]


def test_serve_with_an_unreachable_broker_exits_3_in_one_line(tmp_path):
    config = tmp_path / "w.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "127.0.0.1:{free_port()}"\nconnect_timeout_ms = 3000\n'
        f'[database]\nurl = "sqlite:///{tmp_path}/a.db"\n'
        f'[metrics]\nhost = "127.0.0.1"\nport = 0\n[scoring]\ndevice = "cpu"\n'
        f'[[watchlist]]\nname = "kl"\nmodel = "{ZOO_MODEL}"\ncalibration = "{ZOO_CALIBRATION}"\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "worker.cli", "db", "upgrade", "--config", str(config)], cwd=REPO,
                   env=env, check=True, capture_output=True, timeout=120)
    out = subprocess.run([sys.executable, "-m", "worker.cli", "serve", "--config", str(config), "--log-level", "ERROR"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in out.stderr.splitlines() if line.startswith("aedr: error:")]
    assert out.returncode == 3, out.stderr
    assert len(errors) == 1 and "cannot be used" in errors[0] and "Traceback" not in out.stderr
    assert "connect_timeout_ms=3000" in errors[0]
