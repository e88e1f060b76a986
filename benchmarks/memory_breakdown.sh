#!/usr/bin/env bash
# The memory breakdown of the SST-2 recipe (all-MiniLM-L6-v2) per optimizer, and what the optimizer
# step in backward saves, each run in its own process; `finetune-opt compare` writes the table and
# the stacked bars. The breakdown is taken on the last warm-up step (step 5), so 6 steps suffice.
#     bash benchmarks/memory_breakdown.sh [OUT]      # default benchmarks/results/cpu_2core/memory_breakdown
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/cpu_2core/memory_breakdown}"
RUNS="$(mktemp -d)"
common=(--config sst2 max_steps=6 save_final_model=false)
run() {  # NAME OVERRIDES...
    local name=$1; shift
    python recipes/finetune_glue.py "${common[@]}" output_dir="$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1
    echo "$name done"
}
# The recipe's batch (32 x 64): activations are the largest part of the step.
run adamw_foreach optimizer=adamw implementation=foreach
run adamw_fused optimizer=adamw_fused
run adamw_8bit optimizer=adamw_8bit
run adafactor optimizer=adafactor
# A small batch (8 x 32), where parameters, gradients and state dominate as in a large model:
# the normal step against the step in backward (no clipping: it needs every gradient first).
small=(batch_size=8 max_length=32 max_grad_norm=null)
for name in adamw adamw_fused; do
    run "${name}_b8" optimizer=$name "${small[@]}"
    run "${name}_b8_in_backward" optimizer=$name "${small[@]}" optimizer_in_backward=true
done
for set in "adamw_foreach adamw_fused adamw_8bit adafactor" "adamw_b8 adamw_b8_in_backward adamw_fused_b8 adamw_fused_b8_in_backward"; do
    dirs=(); for n in $set; do dirs+=("$RUNS/$n"); done
    sub=$([ "${set%% *}" = adamw_foreach ] && echo batch32 || echo batch8_in_backward)
    python -m finetune_opt.cli compare "${dirs[@]}" --out "$OUT/$sub"
done
