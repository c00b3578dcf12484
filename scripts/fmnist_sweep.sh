#!/usr/bin/env bash
# Reproduces results/fashion_mnist.md: CE / GCE / DAL on Fashion-MNIST (the fmnist_cpu preset) under
# symmetric noise 0.2/0.4/0.6 and asymmetric / instance noise 0.4, 3 training seeds each (45 runs), two
# jobs at a time (the local preset: pip install 'noisybench[cluster]'), then the report.
# Usage: scripts/fmnist_sweep.sh OUT_DIR [overrides]
set -euo pipefail
out=${1:?usage: fmnist_sweep.sh OUT_DIR [overrides]}
shift
time noisybench train -m hydra/launcher=local experiment=fmnist_cpu seed=0,1,2 method=ce,gce,dal \
  noise=symmetric noise.rate=0.2,0.4,0.6 "$@" hydra.sweep.dir="$out/symmetric"
time noisybench train -m hydra/launcher=local experiment=fmnist_cpu seed=0,1,2 method=ce,gce,dal \
  noise=asymmetric,instance noise.rate=0.4 "$@" hydra.sweep.dir="$out/classdep"
noisybench report "$out" -o "$out/report"
