"""Measure what worker/allocator.py buys: minor page faults per forward pass on a thread other
than the main one (where the worker scores), with glibc's default malloc thresholds and with
the worker's fixed ones, each in a fresh process. Prints a small table.

    .venv/bin/python bench/allocator.py

Measured when the thresholds were introduced: about 6 400 faults per forward pass by default,
none when tuned (docs/PERFORMANCE.md). It measures this machine's C library as much as the code,
which is why it is a benchmark and not a test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import resource, sys, threading
import torch
if sys.argv[1] == "tuned":
    from worker.allocator import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(1)
net = torch.nn.Sequential(*[torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(4)]).eval()
x = torch.randn(4, 32, 128, 128)  # 8 MiB activations: above glibc's initial mmap threshold
result = {}
def forward():
    with torch.inference_mode():
        net(x)
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for _ in range(10):
            net(x)
        result["faults"] = (resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) / 10
thread = threading.Thread(target=forward)
thread.start()
thread.join()
print(result["faults"])
"""


def faults_per_forward(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=True)
    return float(out.stdout.strip())


def main() -> None:
    print("| malloc thresholds | minor faults per forward pass (scoring thread) |")
    print("|---|---:|")
    for mode in ("default", "tuned"):
        print(f"| {mode} | {faults_per_forward(mode):.0f} |")


if __name__ == "__main__":
    main()
