#!/usr/bin/env bash
# Reproduces results/mnist1d.md: CE / GCE / DAL / STORM x inclusive symmetric noise 0.2/0.4/0.6 x 3 seeds,
# MNIST-1D (10,000 samples), 1-D CNN, SGD + cosine, 100 epochs. Prints the merged table.
set -euo pipefail
out="${1:-multirun/mnist1d}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
time noisybench train -m method=ce,gce,dal noise.rate=0.2,0.4,0.6 seed=0,1,2 hydra.sweep.dir="$out/ce_gce_dal"
time noisybench train -m method=storm seed=0,1,2 noise.rate=0.2,0.4,0.6 trainer.threads=1 hydra.sweep.dir="$out/storm"
noisybench report "$out/ce_gce_dal" "$out/storm" -k last,selected,best -o "$out/report"
cat "$out/report/table.md"
