#!/usr/bin/env bash
# Reproduces results/sms_spam.md: STORM's spam protocol (experiment=storm_spam) with CE / GCE /
# DAL / STORM x flip noise 0-0.4 on the training split x 10 seeds, and STORM in the public code's
# configuration (experiment=storm_paper) on the same grid.
# Usage: table_sms.sh <dir containing sms_spam/> [out dir]
set -euo pipefail
data="${1:?usage: table_sms.sh <dir containing sms_spam/> [out dir]}"
out="${2:-multirun/sms_spam}"
seeds=0,1,2,3,4,5,6,7,8,9
rates=0.0,0.1,0.2,0.3,0.4
time noisybench train -m hydra/launcher=local experiment=storm_spam method=ce,gce,dal noise.rate=$rates seed=$seeds \
  data_dir="$data" hydra.sweep.dir="$out/base"
time noisybench train -m hydra/launcher=local experiment=storm_spam method=storm seed=$seeds \
  noise.rate=$rates data_dir="$data" hydra.sweep.dir="$out/storm"
time noisybench train -m hydra/launcher=local experiment=storm_paper seed=$seeds \
  noise.rate=$rates data_dir="$data" hydra.sweep.dir="$out/storm_paper"
noisybench report "$out/base" "$out/storm" -k last,selected,best -o "$out/report"
noisybench report "$out/storm_paper" -k last,selected,best -o "$out/report_storm_paper"
noisybench plot "$out/storm" -o "$out/figures" -f png,pdf
cat "$out/report/table.md" "$out/report_storm_paper/table.md"
