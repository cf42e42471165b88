#!/usr/bin/env bash
# Fit the shipped thresholds of the zoo (worker/zoo/calibrations/*.json) with `aedr calibrate`,
# on each model's calibration images from scripts/make_sets.py, at the paper's default α = 0.05.
#   .venv/bin/python scripts/make_sets.py --out data/sets && scripts/calibrate_zoo.sh data/sets [NAME ...]
# With NAMEs, only those members are (re)calibrated; the others' files are left as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
sets=${1:-data/sets}
shift || true
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(kl-f4c4 kl-f4c16 kl-f8c4 vq-f4 tiny-f8 dc-f8c8 flux2-f8c16 qwen-f8c8)
fi
mkdir -p worker/zoo/calibrations docs/img
for name in "${names[@]}"; do
  .venv/bin/aedr calibrate --name "$name" --model "worker/zoo/models/$name" --device cpu \
    --images "$sets/$name/calibration" --alpha 0.05 --negatives "$sets/real/validation" \
    --out "worker/zoo/calibrations/$name.json" --plot "docs/img/calibration-$name.png" --quiet
done
