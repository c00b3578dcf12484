#!/usr/bin/env bash
# Reproduces results/mnist1d.md: CE / GCE / DAL / STORM x inclusive symmetric noise 0/0.2/0.4/0.6 x 3 seeds,
# MNIST-1D (10,000 samples), 1-D CNN, SGD + cosine, 100 epochs; jobs side by side (the local preset).
# Prints the merged table and draws the figures.
set -euo pipefail
out="${1:-multirun/mnist1d}"
time noisybench train -m hydra/launcher=local method=ce,gce,dal,storm noise.rate=0,0.2,0.4,0.6 seed=0,1,2 \
  hydra.sweep.dir="$out"
noisybench report "$out" -k last,selected,best -o "$out/report"
noisybench plot "$out" -o "$out/figures" -f png,pdf
cat "$out/report/table.md"
