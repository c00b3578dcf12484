#!/usr/bin/env bash
# Reproduces results/sms_spam.md: STORM's spam protocol (experiment=storm_spam) with CE / GCE / DAL
# x flip noise 0-0.4 on the training split x 10 seeds. Usage: table_sms.sh <dir containing sms_spam/> [out]
set -euo pipefail
data="${1:?usage: table_sms.sh <dir containing sms_spam/> [out dir]}"
out="${2:-multirun/sms_spam}"
time noisybench train -m experiment=storm_spam method=ce,gce,dal noise.rate=0.0,0.1,0.2,0.3,0.4 \
  seed=0,1,2,3,4,5,6,7,8,9 data_dir="$data" hydra.sweep.dir="$out"
cat "$out/table.md"
