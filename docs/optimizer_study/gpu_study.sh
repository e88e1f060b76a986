#!/usr/bin/env bash
# The optimizer study on one lent GPU, inside one device call (at most 10 minutes a command):
#   bash docs/optimizer_study/gpu_study.sh --carry .carry --out DIR [--seconds 480] [--parallel 16]
#                                          [--config docs/optimizer_study/study.yaml]
# Runs `finetune-opt study` (cells --parallel at a time: MiniLM leaves a big GPU mostly idle, so the
# cells' accuracy is what counts here, not their step times) for at most --seconds, then kills the
# study and every running cell with SIGKILL: a cell that had not finished leaves no results.json and
# runs again on resume. It packs every finished cell (results.json or failed.json, and its log), the
# study's log and env.json into DIR, at most two levels down as the device tool returns files:
#   DIR/cells.tar.gz  DIR/study.log  DIR/env.json
# Back here, unpack and resume (or only report what finished):
#   mkdir -p runs/optimizer_study && tar -xzf DIR/cells.tar.gz -C runs/optimizer_study
#   FINETUNE_OPT_DATA=../shared/data finetune-opt study --config docs/optimizer_study/study.yaml --report-only
set -uo pipefail
cd "$(dirname "$0")/../.."

CARRY="" OUT="" SECONDS_LIMIT=480 PARALLEL=16 CONFIG=docs/optimizer_study/study.yaml
while [ $# -gt 0 ]; do
    case "$1" in
        --carry) CARRY="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --seconds) SECONDS_LIMIT="$2"; shift ;;
        --parallel) PARALLEL="$2"; shift ;;
        --config) CONFIG="$2"; shift ;;
        *) echo "gpu_study.sh: unknown option $1; use --carry DIR, --out DIR, --seconds N, --parallel N, --config YAML" >&2
           exit 2 ;;
    esac
    shift
done
[ -n "$OUT" ] || { echo "gpu_study.sh: --out DIR is required" >&2; exit 2; }
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MODEL=()
if [ -n "$CARRY" ]; then  # the GPU image lacks datasets, dill, multiprocess, schedulefree, torchao
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/finetune_opt_site "$CARRY"/whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/finetune_opt_site" FINETUNE_OPT_DATA="$CARRY/data"
    MODEL=("model=$CARRY/minilm")
fi
DEVICE=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
python3 benchmarks/write_env.py "$OUT/env.json" "$DEVICE"
STUDY_DIR=$(python3 -c "from finetune_opt.study.runner import load_study; print(load_study('$CONFIG').output_dir)")

# setsid: the study leads its own process group, which its cells join, so one kill stops them all.
setsid python3 -m finetune_opt.cli study --config "$CONFIG" --parallel "$PARALLEL" "${MODEL[@]}" \
    > "$OUT/study.log" 2>&1 &
STUDY=$!
deadline=$((SECONDS + SECONDS_LIMIT))
while kill -0 "$STUDY" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 2; done
if kill -0 "$STUDY" 2>/dev/null; then
    echo "gpu_study.sh: stopped after ${SECONDS_LIMIT}s; the unfinished cells rerun on resume" | tee -a "$OUT/study.log"
    kill -KILL -- "-$STUDY" 2>/dev/null
fi
wait "$STUDY"; echo "study exit $?" | tee -a "$OUT/study.log"

cd "$STUDY_DIR" || exit 1
finished=$(ls -d cells/*/ 2>/dev/null | while read -r d; do
    for f in results.json failed.json; do [ -f "$d$f" ] && echo "$d$f" "${d%/}.log"; done
done)
tar -czf "$OUT/cells.tar.gz" $finished $(ls summary.json report.md ./*.png 2>/dev/null)
echo "$(echo "$finished" | grep -c json) finished cells packed into $OUT/cells.tar.gz ($(du -h "$OUT/cells.tar.gz" | cut -f1))"
