#!/usr/bin/env bash
# Reproduces results/synthwoz.md: CE / GCE / DAL / STORM x dst noise 0/0.2/0.4 x 5 seeds on
# synthwoz (the dataset's defaults and conf/method_dataset/*_synthwoz.yaml). Both sweeps with
# their jobs side by side (the local preset), one thread each. One report over both
# sweeps; STORM's figures. Usage: scripts/table_synthwoz.sh [out dir]
set -euo pipefail
out="${1:-multirun/synthwoz}"
time noisybench train -m hydra/launcher=local dataset=synthwoz method=ce,gce,dal seed=0,1,2,3,4 noise.rate=0.0,0.2,0.4 \
  hydra.sweep.dir="$out/base"
time noisybench train -m hydra/launcher=local dataset=synthwoz method=storm seed=0,1,2,3,4 \
  noise.rate=0.0,0.2,0.4 hydra.sweep.dir="$out/storm"
noisybench report "$out/base" "$out/storm" -k last,selected,best -o "$out/report"
noisybench plot "$out/storm" -o "$out/figures" -f png,pdf
cat "$out/report/table.md"
