#!/usr/bin/env bash
# Reproduces results/mnist1d.md: CE / GCE / DAL / STORM x inclusive symmetric noise 0/0.2/0.4/0.6
# x 3 seeds, MNIST-1D (10,000 samples), 1-D CNN, SGD + cosine, 100 epochs; jobs side by side (the
# local preset). Three sweeps, as the committed tables were made (CE/GCE/DAL, STORM's default, STORM at
# fixed sharpness 1, 2 and 4), then the reports and figures over them.
# Usage: scripts/table_mnist1d.sh [out dir]
set -euo pipefail
out="${1:-multirun/mnist1d}"
time noisybench train -m hydra/launcher=local method=ce,gce,dal noise.rate=0,0.2,0.4,0.6 \
  seed=0,1,2 hydra.sweep.dir="$out/base"
time noisybench train -m hydra/launcher=local method=storm noise.rate=0,0.2,0.4,0.6 \
  seed=0,1,2 hydra.sweep.dir="$out/storm"
time noisybench train -m hydra/launcher=local method=storm method.sharpness=1,2,4 noise.rate=0,0.2,0.4,0.6 \
  seed=0,1,2 hydra.sweep.dir="$out/storm_sharp"          # the rows "sharpness=1" and "sharpness tuned"
noisybench report "$out/base" "$out/storm" -k last,selected,best -o "$out/report"
noisybench report "$out/storm_sharp" --tune method.sharpness -k last,selected -o "$out/report_sharp"
noisybench report "$out/base" -k detection,detection_lowk -o "$out/report_detection"
noisybench plot "$out/base" "$out/storm" -o "$out/figures" -f png,pdf
noisybench plot "$out/base" "$out/storm_sharp" --tune method.sharpness -o "$out/figures" -f png,pdf
cat "$out/report/table.md" "$out/report_sharp/table.md"
