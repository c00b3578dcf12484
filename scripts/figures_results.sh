#!/usr/bin/env bash
# Redraws the committed figures, results/figures/<set>/*.png, and their captions (figures.md, and
# figures_tuned.md for the tuned set) from the sweeps the table scripts write (their default out
# dirs under MULTIRUN), with the current plotting code. PNG only, as committed; every figure of a
# set is drawn (results/*.md embed some of them). Run from the repository root.
# Usage: scripts/figures_results.sh [MULTIRUN dir, default multirun]
set -euo pipefail
runs="${1:-multirun}"
plot() {  # plot SET PATH... [options]: into results/figures/SET
  local set="$1"
  shift
  mkdir -p "results/figures/$set"
  noisybench plot "$@" -o "results/figures/$set" -f png
}
plot mnist1d "$runs/mnist1d/base" "$runs/mnist1d/storm"          # scripts/table_mnist1d.sh
plot mnist1d "$runs/mnist1d/base" "$runs/mnist1d/storm_sharp" --tune method.sharpness
plot mnist1d_tuned "$runs/mnist1d_lr"                             # scripts/table_mnist1d_tuned.sh
plot mnist1d_tuned "$runs/mnist1d_lr" --tune optim.optimizer.lr
plot sms_spam "$runs/sms_spam/storm"                              # scripts/table_sms.sh
plot synthwoz "$runs/synthwoz/storm"                              # scripts/table_synthwoz.sh
