"""worker/allocator.py sets glibc's thresholds where glibc is, and is a no-op elsewhere. (What
the thresholds buy on this machine is measured by bench/allocator.py, not asserted here.)"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

from worker import allocator

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_thresholds_are_set_on_glibc():
    probe = "from worker.allocator import keep_freed_memory; print(keep_freed_memory(), keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]  # set, and setting again is harmless


def test_without_glibc_nothing_is_set(monkeypatch):
    def no_libc(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert allocator.keep_freed_memory() is False
