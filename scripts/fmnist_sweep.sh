#!/usr/bin/env bash
# The Fashion-MNIST table of results/fashion_mnist.md: ce, gce, dal x (symmetric 0.2/0.4/0.6,
# asymmetric 0.4, instance 0.4) x seeds 0-2 with the fmnist_cpu preset, seed-major so that an
# interrupted run still covers every cell. Usage: scripts/fmnist_sweep.sh OUT_DIR [extra overrides]
# then: noisybench report OUT_DIR -o OUT_DIR/report
set -euo pipefail
out=${1:?usage: fmnist_sweep.sh OUT_DIR [overrides]}
shift
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one core: the machine is shared
for seed in 0 1 2; do
  noisybench train -m experiment=fmnist_cpu seed=$seed method=ce,gce,dal noise=symmetric noise.rate=0.2,0.4,0.6 \
    "$@" hydra.sweep.dir="$out/seed$seed-symmetric"
  noisybench train -m experiment=fmnist_cpu seed=$seed method=ce,gce,dal noise=asymmetric,instance noise.rate=0.4 \
    "$@" hydra.sweep.dir="$out/seed$seed-classdep"
done
noisybench report "$out" -o "$out/report"
