#!/usr/bin/env bash
# The main job: fine-tune all-MiniLM-L6-v2 on SST-2 with each optimizer, then compare them.
#   FINETUNE_OPT_DATA=../shared/data bash recipes/compare_sst2.sh [key=value overrides for every run]
# Data: $FINETUNE_OPT_DATA/sst2 (GLUE TSVs); unset, the recipe loads nyu-mll/glue from the Hub.
# Runs land in $RUNS (default runs/), the report in $RUNS/sst2-report.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-runs}"
LAUNCH="${LAUNCH:-accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no}"
dirs=()
for optimizer in adam_l2 adamw adamw_fused; do
  $LAUNCH recipes/finetune_glue.py --config sst2 \
    optimizer=$optimizer output_dir="$RUNS/sst2-$optimizer" "$@"
  dirs+=("$RUNS/sst2-$optimizer")
done
finetune-opt compare "${dirs[@]}" --out "$RUNS/sst2-report"
