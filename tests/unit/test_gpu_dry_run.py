"""bench/gpu.sh, the GPU-ready check, dry-run on the CPU at a small size, so that the script a
GPU day depends on cannot rot: it runs unattended, scores the SDXL-VAE architecture in fp32 and
bf16 through the real core, runs `aedr serve` end to end on it (the real broker, SQLite), and
writes its JSON where $OUT says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_runs_on_the_cpu_and_writes_its_figures(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", "bench/gpu.sh", "--device", "cpu", "--size", "32", "--batches", "1", "2",
                           "--iters", "1", "--compare", "2", "--compile", "off", "--e2e", "24", "--e2e-repeats", "1",
                           "--e2e-batch", "8"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["device"] == "cpu" and result["size"] == 32
    assert result["parameters"] > 50_000_000  # the SDXL VAE's architecture, not a toy
    for label in ("fp32", "bf16"):
        for batch in (1, 2):
            run = result["runs"][f"{label}/{batch}"]
            assert run["images_per_s"] > 0 and run["tflops"] > 0
            assert run["peak_share"] is None  # no peak is known for a CPU
        assert result["runs"][f"{label}/gflop_per_image"] > 0
    errors = result["bf16_vs_fp32_max_relative_error"]
    assert set(errors) == {"loss1", "loss2", "ratio", "score"}
    assert all(0 <= e < 0.5 for e in errors.values()), errors
    assert "| fp32 | 2 |" in done.stdout and "| bf16 | 2 |" in done.stdout
    table = (tmp_path / "gpu.md").read_text()
    assert "SDXL-VAE architecture" in table and "| fp32 | 2 |" in table and "| bf16 | 1 |" in table
    # End to end: every event stored by a real `aedr serve`, its rate against pure scoring.
    e2e = result["end_to_end"]
    assert "error" not in e2e, e2e.get("error")
    assert e2e["events"] == 24 and len(e2e["pure"]) == len(e2e["e2e"]) == 1
    assert e2e["pure"][0] > 0 and e2e["e2e"][0] > 0
    assert e2e["e2e_over_pure"] == e2e["e2e"][0] / e2e["pure"][0]
    assert "End to end (`aedr serve`, Tansu on loopback, SQLite), 24 events of 32²" in table
    assert "end to end / pure scoring = " in table
