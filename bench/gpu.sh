#!/usr/bin/env bash
# GPU-ready check (docs/PERFORMANCE.md): run on a machine with a CUDA GPU, from the repo root.
# Needs torch with CUDA and diffusers; wheels in .whl/ are installed first if diffusers is absent
# (machines without network access), else pip installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import diffusers" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/aedr-site .whl/*.whl
    export PYTHONPATH=/tmp/aedr-site${PYTHONPATH:+:$PYTHONPATH}
  else
    "$PY" -m pip install -q "diffusers>=0.42,<0.43"
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" bench/gpu.py "$@"
