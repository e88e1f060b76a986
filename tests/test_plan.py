"""`finetune-opt plan` (finetune_opt.plan.planner): its bytes are the run's `predicted` block (one function),
verified against measured breakdowns (finetune_opt.plan.check: single process in the default suite,
DDP and FSDP2 on 2 gloo processes marked slow), `fits` against a run under a memory cap, the
refusals in the run's own words, and bad input as one line with exit code 2."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from finetune_opt.plan import planner as plan

from finetune_opt.plan import check as plan_check
from finetune_opt.cli import main
from finetune_opt.measure.memory import PLANNED, predicted_breakdown
from finetune_opt.models.loading import load_model
from finetune_opt.optim import REGISTRY, create_optimizer, runs_on
from tests.conftest import REPO
from tests.test_reliability import fresh_accelerate_state  # noqa: F401 (fixture)

TINY = plan_check.TINY_LLAMA
TINY_FLOW = "{" + ", ".join(f"{k}: {v}" for k, v in TINY.items()) + "}"


def setup(**kw) -> plan.Setup:
    values = dict(task="gsm8k", max_length=64, batch_size=4, processes=1, memory=2.0**40, memory_source="-",
                  bandwidth_GBps=10.0, bandwidth_source="-", lora_r=4, model_config=TINY)
    return plan.Setup(**{**values, **kw})


def test_plan_bytes_are_the_runs_prediction_for_every_registry_entry():
    """The plan's row (meta device, no optimizer built) equals what the run's breakdown predicts from
    the real model and the built optimizer, component by component, for every entry."""
    rows = plan.plan(setup(only={"tuning": {"full"}, "precision": {"fp32"}, "in_backward": {"off"},
                                 "checkpointing": {"off"}}))
    assert sorted(r["optimizer"] for r in rows) == sorted(REGISTRY)
    torch.manual_seed(0)
    model = load_model(None, head="causal-lm", model_config=TINY)
    by_name = {r["optimizer"]: r for r in rows}
    for row in rows:
        spec = REGISTRY[row["optimizer"]]
        if spec.name not in runs_on("cpu"):  # paged_adamw_8bit (CUDA only): its unpaged twin's bytes
            assert {c: row[c] for c in PLANNED} == {c: by_name["adamw_bnb_8bit"][c] for c in PLANNED}
            continue
        optimizer = create_optimizer(spec.name, model)
        assert row["implementation"] == optimizer.finetune_opt["implementation"] == spec.default_for("cpu")
        run = predicted_breakdown(model, optimizer, spec, row["implementation"], (4, 64), "no")
        assert {c: row[c] for c in PLANNED} == run, spec.name
        assert row["traffic_bytes"] == spec.traffic_bytes_for(optimizer.param_groups)
        assert row["step_ms"] == pytest.approx(1e3 * row["traffic_bytes"] / 10e9)


def test_fsdp2_divides_the_sharded_components_and_refuses_what_the_run_refuses():
    rows = plan.plan(setup(processes=2, only={"tuning": {"full"}, "precision": {"fp32"}, "checkpointing": {"off"}}))
    by = {(r["optimizer"], r["distribution"], r["in_backward"]): r for r in rows}
    ddp, fsdp = by["adamw", "ddp", "off"], by["adamw", "fsdp2", "off"]
    assert fsdp["optimizer_state"] == ddp["optimizer_state"] // 2
    assert fsdp["parameters"] == pytest.approx(ddp["parameters"] / 2, rel=0.01)
    assert fsdp["activations_and_workspace"] == ddp["activations_and_workspace"]
    assert ddp["ddp_gradient_buckets"] == ddp["gradients"] and fsdp["ddp_gradient_buckets"] == 0
    assert by["adamw_8bit", "fsdp2", "off"]["refused"] == ("optimizer adamw_8bit cannot step FSDP2 shards: "
                                                           + REGISTRY["adamw_8bit"].fsdp2_refusal)
    assert by["adamw", "fsdp2", "on"]["refused"].startswith("optimizer_in_backward cannot run with fsdp2: a sharded")
    assert by["adamw", "ddp", "on"]["refused"] == ("optimizer_in_backward cannot run with more than one process "
                                                   "(DDP reduces gradients after these hooks have run)")
    assert all(r["refused"] is None for r in rows[:rows.index(next(r for r in rows if r["refused"]))])


def test_lora_is_refused_where_the_recipe_refuses_it():
    rows = plan.plan(setup(task="wikitext2", only={"optimizer": {"adamw"}, "tuning": {"lora"}}))
    assert {r["refused"] for r in rows} == {"peft is for the SFT recipe (tasks gsm8k, instruct); finetune_lm.py "
                                            "(task 'wikitext2') does not use it: set peft=null"}


def test_the_command_prints_writes_json_and_png(tmp_path, capsys):
    out_json, out_png = tmp_path / "plan.json", tmp_path / "plan.png"
    code = main(["plan", "--model-config", TINY_FLOW, "--max-length", "64", "--batch-size", "4", "--gpu",
                 "H100-80GB", "--only", "optimizer=adamw,adamw_fused", "--only", "precision=bf16",
                 "--json", str(out_json), "--png", str(out_png)])
    assert code == 0
    printed = capsys.readouterr().out
    rows = json.loads(out_json.read_text())["rows"]
    assert len(rows) == 2 * 2 * 2 * 2  # optimizers x tuning x in-backward x checkpointing
    totals = [r["total"] for r in rows if not r["refused"]]
    assert totals == sorted(totals) and all(r["fits"] for r in rows if not r["refused"])
    assert "/ 3350 GB/s (H100-80GB datasheet peak)" in printed and "on cuda" in printed
    assert printed.count("| adamw") == len(rows)
    assert out_png.stat().st_size > 10_000
    assert main(["plan", "--model-config", TINY_FLOW, "--max-length", "64", "--gpu-memory", "13MiB",
                 "--bandwidth", "10", "--only", "fits=no", "--only", "optimizer=adamw"]) == 0
    printed = capsys.readouterr().out
    assert "| NO |" in printed and "| yes |" not in printed and "refused" not in printed


@pytest.mark.parametrize("argv,message", [
    (["--only", "optimiser=adamw"], "unknown --only key 'optimiser'; choose one of: optimizer=..., tuning=..., "
     "precision=..., distribution=..., in_backward=..., checkpointing=..., fits=..."),
    (["--only", "optimizer=adamw,adamx"], "unknown --only optimizer value 'adamx'; choose one of: "
     + ", ".join(REGISTRY)),
    (["--only", "distribution=fsdp2"], "unknown --only distribution value 'fsdp2'; choose one of: single"),
    (["--gpu-memory", "80 gigs"], "bad memory size '80 gigs'; write a number > 0 with one of: B, KB, MB, GB, TB, "
     "KiB, MiB, GiB, TiB (e.g. 80GiB)"),
    (["--gpu", "H100"], "unknown --gpu 'H100'; choose one of: A100-80GB, H100-80GB, H200"),
    (["--task", "sst3"], None),
], ids=["only-key", "only-value", "fsdp2-one-process", "memory", "gpu", "task"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, argv, message):
    out = tmp_path / "plan.json"
    code = main(["plan", "--model-config", TINY_FLOW, "--max-length", "64", *argv, "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and err.count("\n") == 1
    if message:
        assert err == f"finetune-opt: error: {message}\n"
    else:
        assert err.startswith("finetune-opt: error: unknown task 'sst3'; choose one of: ")


# --- verified against measurement ------------------------------------------------------------------

# In the default suite, three single-process configurations; on 2 gloo processes, marked slow. The
# whole grid is benchmarks/results/cpu_2core/plan/verify.md. DDP full fp32 checks that the probe
# skips the step where DDP rebuilds its buckets (probed there, the new buckets counted as
# activations: 1.42x the prediction).
GRID = [
    plan_check.case("full fp32 adamw"),
    plan_check.case("full bf16 ckpt", precision="bf16", checkpointing="on"),
    plan_check.case("lora fp32 in-bwd ckpt fused", tuning="lora", optimizer="adamw_fused", in_backward="on",
                    checkpointing="on"),
    pytest.param(plan_check.case("ddp lora bf16", distribution="ddp", tuning="lora", precision="bf16"),
                 marks=pytest.mark.slow),
    pytest.param(plan_check.case("ddp full fp32", distribution="ddp"), marks=pytest.mark.slow),
    pytest.param(plan_check.case("fsdp2 full fp32", distribution="fsdp2"), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("case", GRID, ids=lambda c: c["name"])
def test_plan_is_within_tolerance_of_the_measured_breakdown(tmp_path, case):
    result = plan_check.verify(case, str(tmp_path))
    assert result["plan_equals_run_prediction"]
    assert result["batch_shape"] == [4, 64]
    checked = {k: x for k, x in result["components"].items() if x["ok"] is not None}
    assert "activations_and_workspace" in checked and "optimizer_state" in checked
    assert all(x["ok"] for x in checked.values()), result["components"]


def test_the_run_predicts_its_longest_batch_when_the_probed_one_is_shorter(tmp_path):
    """The probed step's batch is whichever came last in warm-up; the breakdown also predicts the
    longest batch (rows x max_length), labelled as predicted, where the activations are larger."""
    c = plan_check.case("short batches", data_length=16)
    b = plan_check.measure(c, str(tmp_path))["breakdown"]
    longest = b["longest_batch"]
    assert b["batch_shape"] == [4, 16] and longest["batch_shape"] == [4, 64] and longest["measured"] is False
    assert longest["predicted"]["activations_and_workspace"] > 3 * b["predicted"]["activations_and_workspace"]
    assert longest["predicted_total"] == plan_check.plan_row(c)["total"]


# --- fits: a run under a memory cap ---------------------------------------------------------------

CAPPED = textwrap.dedent("""
    import gc, json, resource, sys
    import torch
    from accelerate.state import AcceleratorState, GradientState
    from finetune_opt.plan import check as plan_check
    from finetune_opt.train.engine import fit, make_accelerator
    from finetune_opt.models.loading import load_model
    c, warm = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    def vm():  # the address space: what RLIMIT_AS limits
        return int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    def train(case, out):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        cfg = plan_check.run_config(case, out)
        cfg.measure.memory_breakdown = False
        accelerator = make_accelerator(cfg)
        model = load_model(None, head="causal-lm", model_config=case["model_config"])
        vocab = case["model_config"]["vocab_size"]
        rows = [torch.randint(0, vocab, (case["max_length"],)) for _ in range(4 * case["batch_size"])]
        data = [{"input_ids": r, "labels": r} for r in rows]
        fit(cfg, accelerator, model, torch.utils.data.DataLoader(data, batch_size=case["batch_size"]), lambda m: {})
    train(warm, sys.argv[3] + "/warm")  # every lazy import and library mapped before the cap
    total = plan_check.plan_row(c)["total"]
    for factor in (0.6, 1.3):
        gc.collect()
        baseline = vm()
        resource.setrlimit(resource.RLIMIT_AS, (baseline + int(factor * total), resource.RLIM_INFINITY))
        try:
            train(c, sys.argv[3] + f"/{factor}")
            ran = True
        except (RuntimeError, MemoryError):
            ran = False
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print(json.dumps({"factor": factor, "ran": ran, "baseline": baseline, "total": total}))
""")
BIGGER = {**TINY, "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8,
          "num_key_value_heads": 4, "vocab_size": 4096}


def test_fits_agrees_with_a_run_under_a_memory_cap(tmp_path):
    """A child process caps its address space at what it holds before building the model plus
    0.6x, then 1.3x, the plan's total, and trains: the plan's `fits` (that cap as the memory, the
    child's own start as the reserve) must say whether the run got through."""
    c = plan_check.case("capped", model_config=BIGGER, max_length=128)
    warm = plan_check.case("warm-up", max_length=128)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1", "TQDM_DISABLE": "1"}
    p = subprocess.run([sys.executable, "-c", CAPPED, json.dumps(c), json.dumps(warm), str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith('{"factor"')]
    assert [r["ran"] for r in runs] == [False, True], runs
    for r in runs:
        cap = r["baseline"] + r["factor"] * r["total"]
        row = plan.plan(setup(model_config=BIGGER, max_length=128, memory=cap, reserve=r["baseline"],
                              only={k: {c[k]} for k in plan.AXES}))[0]
        assert row["total"] == r["total"] and row["fits"] == r["ran"], r


def test_a_pretrained_directory_is_planned_from_its_config_as_the_glue_recipe_builds_it(minilm_path):
    """--model DIR: only config.json is read; the rows equal the run's prediction for the real
    pretrained classifier with its [CLS]-only last layer (the recipe's default), and LoRA rows are
    refused for a GLUE task (before peft would be tried on a classification head)."""
    from finetune_opt.models import cls_only_last_layer
    rows = plan.plan(setup(model_config=None, model=minilm_path, task="sst2", only={
        "optimizer": {"adamw"}, "precision": {"fp32"}, "in_backward": {"off"}, "checkpointing": {"off"}}))
    full = next(r for r in rows if r["tuning"] == "full")
    assert next(r for r in rows if r["tuning"] == "lora")["refused"].startswith("peft is for the SFT recipe")
    model = load_model(minilm_path, head="classification", num_labels=2)
    cls_only_last_layer.apply(model)
    run = predicted_breakdown(model, create_optimizer("adamw", model), REGISTRY["adamw"], full["implementation"],
                              (4, 64), "no")
    assert {c: full[c] for c in PLANNED} == run
