#!/usr/bin/env bash
# Reproduces results/mnist1d_tuned.md: CE / GCE / DAL x lr 0.01/0.05/0.1 x inclusive symmetric
# noise 0.2/0.4/0.6 x 3 seeds on MNIST-1D (the default job otherwise), then the table with lr
# chosen per (method, noise) by the mean noisy-validation score over seeds, the table of every
# lr, and the figures (every lr, and tuned as the table). Usage: scripts/table_mnist1d_tuned.sh [out dir]
set -euo pipefail
out="${1:-multirun/mnist1d_lr}"
time noisybench train -m hydra/launcher=local method=ce,gce,dal optim.optimizer.lr=0.01,0.05,0.1 \
  noise.rate=0.2,0.4,0.6 seed=0,1,2 hydra.sweep.dir="$out"
noisybench report "$out" --tune optim.optimizer.lr -k last,selected,best -o "$out/tuned"
noisybench report "$out" -k last,selected,best -o "$out/all"
noisybench plot "$out" -o "$out/figures" -f png,pdf
noisybench plot "$out" --tune optim.optimizer.lr -o "$out/figures" -f png,pdf  # the *_tuned figures
cat "$out/tuned/table.md" "$out/all/table.md"
