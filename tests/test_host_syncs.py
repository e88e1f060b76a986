"""What the engine reads back from the device during a step. On a GPU each read (`.item()`,
`.tolist()`, `bool(tensor)`, ...) waits for every kernel queued so far, so the host cannot run ahead;
the engine keeps losses, gradient norms, token counts and step-time events on the device and reads
them on logging steps. The non-finite flag is read too, but where the optimizer skips on the
device (an implementation that takes `found_inf`: train/skips.py) from a host copy one step later,
as host memory; every other implementation reads it before its update, one read a step. This test
counts reads per step on CPU, where they are cheap but the same calls, so that no new one creeps in."""

import os
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

import finetune_opt
from finetune_opt.config.run_config import RunConfig
from finetune_opt.optim import REGISTRY
from finetune_opt.train import engine
from finetune_opt.train.engine import fit, make_accelerator

PACKAGE = os.path.dirname(finetune_opt.__file__)
READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy")


class MaskedToy(torch.nn.Module):
    """Regression on padded rows: the attention mask weights the features (no reads of its own)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 1)

    def forward(self, input_ids, attention_mask, labels):
        pred = self.lin(input_ids * attention_mask).squeeze(-1)
        return SimpleNamespace(loss=((pred - labels) ** 2).mean())


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 6, generator=g)
    mask = (torch.arange(6)[None, :] < torch.randint(2, 7, (48, 1), generator=g)).float()
    rows = [{"input_ids": x[i], "attention_mask": mask[i], "labels": x[i].sum()} for i in range(48)]
    return torch.utils.data.DataLoader(rows, batch_size=8, shuffle=True)


def reads_per_step(monkeypatch, **overrides) -> dict:
    """{step: Counter of read calls made in TrainingStep and Meter.after_step for that step}."""
    counts, step = {}, {"now": None}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            # the engine's own reads; torch's optimizers and DataLoader read host tensors of their own
            # (CPU step counters, the sampler's permutation), which wait for no device
            if step["now"] is not None and sys._getframe(1).f_code.co_filename.startswith(PACKAGE):
                counts.setdefault(step["now"], Counter())[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)

    def during(method, label):
        def wrapped(self, *args, **kwargs):
            step["now"] = label(self, *args)
            try:
                return method(self, *args, **kwargs)
            finally:
                step["now"] = None
        return wrapped
    seen = {"steps": 0}

    def next_step(_self, *_):
        seen["steps"] += 1
        return seen["steps"]
    monkeypatch.setattr(engine.TrainingStep, "__call__", during(engine.TrainingStep.__call__, next_step))
    monkeypatch.setattr(engine.Meter, "after_step", during(engine.Meter.after_step, lambda _self, state, *_: state.step))
    cfg = RunConfig(**{"max_steps": 9, "log_every": 4, "timing_warmup_steps": 1, "memory_breakdown": False,
                       "warmup_ratio": 0, "output_dir": "unused", **overrides})
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    fit(cfg, make_accelerator(cfg), MaskedToy(), loader(), lambda m: {"accuracy": 0.5})
    return counts


SKIPS_ON_DEVICE = [(name, impl) for name, spec in REGISTRY.items() for impl, how in spec.implementations.items()
                   if how.takes_found_inf and spec.supports(impl, "cpu")]
LOGGING = {4, 8, 9}  # log_every=4, max_steps=9


@pytest.mark.parametrize("optimizer,implementation", SKIPS_ON_DEVICE)
def test_a_step_that_does_not_log_reads_nothing_when_the_optimizer_skips_on_the_device(
        monkeypatch, tmp_path, optimizer, implementation):
    counts = reads_per_step(monkeypatch, optimizer=optimizer, implementation=implementation, output_dir=str(tmp_path))
    assert [s for s in range(1, 10) if s not in LOGGING and counts.get(s)] == []
    # the logging steps read the loss and gradient norm windows, once each, and the token counts
    assert all(counts[s]["item"] >= 2 for s in LOGGING)


def test_a_step_that_does_not_log_reads_only_the_flag_when_the_optimizer_cannot_skip_on_the_device(
        monkeypatch, tmp_path):
    assert not REGISTRY["adamw"].implementations["foreach"].takes_found_inf
    counts = reads_per_step(monkeypatch, optimizer="adamw", implementation="foreach", output_dir=str(tmp_path))
    assert {s: counts.get(s) for s in range(1, 10) if s not in LOGGING} == {
        s: Counter({"item": 1}) for s in range(1, 10) if s not in LOGGING}


def test_the_timer_reads_token_counts_only_when_flushed():
    from finetune_opt.measure.timing import StepTimer

    timer = StepTimer(torch.device("cpu"), warmup_steps=0)
    for real in (5, 7):
        timer.begin_step()
        timer.end_step(2, torch.tensor(real), 8)
    assert timer.tokens == 0 and len(timer.pending) == 2  # nothing read yet
    assert len(timer.flush()) == 2 and timer.tokens == 12 and timer.positions == 16 and timer.pending == []
