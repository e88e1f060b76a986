"""The memory breakdown (finetune_opt.measure.memory) and the optimizer step in backward
(finetune_opt.optim.in_backward): probes on known allocations, predicted vs measured through the
engine for every registry entry, foreach's temporaries against fused's none, and in-backward's
equality with the normal step and the peak it saves."""

from types import SimpleNamespace

import pytest
import torch

from finetune_opt.config.run_config import RunConfig
from finetune_opt.errors import ConfigError
from finetune_opt.measure.memory import CpuPhaseProbe
from finetune_opt.optim import REGISTRY, create_optimizer, runs_on
from finetune_opt.optim.in_backward import refusal, step_in_backward
from tests.nets import net
from tests.test_reliability import fresh_accelerate_state, losses, stopped, toy_fit  # noqa: F401 (fixture)

MiB = 2 ** 20


class Deep(torch.nn.Module):
    """Eight equal 512x512 layers (1 MiB of weights each) on a tiny batch: parameters, gradients and
    optimizer state dominate, activations are small, as in a large model at a small batch."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)])

    def forward(self, input_ids, labels):
        return SimpleNamespace(loss=((self.layers(input_ids).sum(-1) - labels) ** 2).mean())


def deep_loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 512, generator=g)
    data = [{"input_ids": x[i], "labels": x[i].mean()} for i in range(32)]
    return torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)


def deep_fit(tmp_path, **overrides):
    from accelerate.state import AcceleratorState, GradientState

    from finetune_opt.train.engine import fit, make_accelerator
    cfg = RunConfig(max_steps=4, log_every=1, timing_warmup_steps=2, lr=1e-3, warmup_ratio=0,
                    output_dir=str(tmp_path), **overrides)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = make_accelerator(cfg)
    model = Deep()
    return fit(cfg, accelerator, model, deep_loader(), lambda m: {}), model


def test_cpu_probe_sees_each_allocation_and_free():
    probe = CpuPhaseProbe()
    with probe.step():
        with probe.phase("forward"):
            kept = torch.empty(1_000_000)             # 4,000,000 bytes, alive after the phase
            torch.empty(2_000_000).fill_(1)           # 8,000,000 bytes, freed at once
        with probe.phase("optimizer_step"):
            del kept
    assert probe.phases["forward"] == {"start": None, "peak_above_start": 12_000_000, "end_above_start": 4_000_000}
    assert probe.phases["optimizer_step"]["end_above_start"] == -4_000_000
    assert probe.peak_above_step_start == 12_000_000


@pytest.mark.parametrize("name", runs_on("cpu"))
def test_breakdown_in_results_matches_prediction(tmp_path, name):
    result, model = deep_fit(tmp_path, optimizer=name)
    b = result.memory["breakdown"]
    measured, predicted = b["measured"], b["predicted"]
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert measured["parameters"] == predicted["parameters"] == weights
    assert measured["gradients"] == predicted["gradients"] == weights
    # state: the spec's cost model, within 1% (0-dim step counters are the rest)
    assert measured["optimizer_state"] == pytest.approx(predicted["optimizer_state"], rel=0.01)
    assert sum(measured["optimizer_state_by_dtype"].values()) == measured["optimizer_state"]
    assert b["method"].startswith("torch.profiler") and b["batch_shape"] == [4, 512]


@pytest.mark.parametrize("implementation,temporaries", [
    ("foreach", lambda group, tensor: group),       # sqrt(v) for the whole decay group at once
    ("for-loop", lambda group, tensor: 3 * tensor),  # sqrt(v), its quotient, the previous tensor's denominator
    ("fused", lambda group, tensor: 0),              # one kernel, no intermediates
])
def test_step_temporaries_show_foreach_and_not_fused(tmp_path, implementation, temporaries):
    result, model = deep_fit(tmp_path, optimizer="adamw", implementation=implementation)
    measured = result.memory["breakdown"]["measured"]["optimizer_step_temporaries"]
    decay_group = 8 * 512 * 512 * 4  # the weights; the biases are the no-decay group
    expected = temporaries(decay_group, 512 * 512 * 4)
    assert measured == pytest.approx(expected, rel=0.02, abs=64 * 1024)
    assert result.memory["breakdown"]["predicted"]["optimizer_step_temporaries"] == pytest.approx(expected, rel=0.01)


# --- optimizer step in backward ------------------------------------------------------------------

def _refused(spec, implementation):
    return refusal(spec, implementation, grad_accum=1, max_grad_norm=None, mixed_precision="no", num_processes=1)


def _train_net(name, implementation, in_backward):
    model = net(torch.float32)
    optimizer = create_optimizer(name, model, implementation=implementation)
    if in_backward:
        step_in_backward(optimizer)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        model(torch.randint(0, 24, (8, 5), generator=g)).square().mean().backward()
        if not in_backward:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name,implementation", [(n, i) for n, s in REGISTRY.items() for i in s.implementations
                                                 if s.supports(i, "cpu")])
def test_in_backward_equals_the_normal_step_bit_for_bit(name, implementation):
    """Every entry and implementation it accepts: identical parameters after 4 steps (tolerance 0:
    the same kernels run on the same tensors, one parameter at a time)."""
    spec = REGISTRY[name]
    if _refused(spec, implementation):
        assert spec.train_eval_modes or spec.implementations[implementation].compile_step
        return
    normal, in_backward = _train_net(name, implementation, False), _train_net(name, implementation, True)
    assert all(torch.equal(a, b) for a, b in zip(normal, in_backward))


@pytest.mark.parametrize("overrides,message", [
    ({"grad_accum": 2, "max_grad_norm": None},
     "optimizer_in_backward cannot run with grad_accum > 1 (the first micro-batch's gradients would already be "
     "applied)"),
    ({}, "optimizer_in_backward cannot run with max_grad_norm (clipping needs the norm of all gradients before any "
         "update): set max_grad_norm=null"),
    ({"optimizer": "adamw_schedule_free", "max_grad_norm": None},
     "optimizer_in_backward cannot run with adamw_schedule_free (its step keeps per-group counters that one step "
     "per parameter would advance many times)"),  # (its CPU default, compiled, is not taken in backward)
    ({"implementation": "compiled", "max_grad_norm": None},
     "optimizer_in_backward cannot run with implementation compiled (one compiled graph per parameter set would "
     "recompile per parameter)"),
])
def test_in_backward_refuses_what_it_cannot_do_at_config(overrides, message):
    with pytest.raises(ConfigError) as e:
        RunConfig(optimizer_in_backward=True, **overrides)
    assert str(e.value) == message


@pytest.mark.parametrize("name", list(REGISTRY))
def test_in_backward_takes_a_default_implementation_it_can_run(name):
    """The device's fastest default may be a compiled step (Lion, schedule-free, Adafactor on a
    CPU), which cannot run in backward: an unset implementation then falls back to one that can,
    and only an entry with nothing but compiled steps is refused for it."""
    spec = REGISTRY[name]
    steppable = [i for i, how in spec.implementations.items() if not how.compile_step]
    try:
        cfg = RunConfig(optimizer=name, optimizer_in_backward=True, max_grad_norm=None)
    except ConfigError as e:
        assert ("implementation compiled" in str(e)) == (not steppable), str(e)
        return
    assert cfg.optimizer.implementation in steppable


def test_in_backward_through_the_engine_equals_normal_and_lowers_the_peak(tmp_path, monkeypatch):
    from accelerate import Accelerator
    normal, normal_model = deep_fit(tmp_path / "normal", optimizer="adamw_fused", max_grad_norm=None)
    # No gradient is left to clip or measure: asking would give a CPU zero, which broke the first
    # CUDA run (it cannot be stacked with the device's flags).
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda *a, **k: pytest.fail("clip_grad_norm_ called"))
    hooked, hooked_model = deep_fit(tmp_path / "hooked", optimizer="adamw_fused", max_grad_norm=None,
                                    optimizer_in_backward=True)
    assert losses(hooked) == losses(normal)
    assert all(torch.equal(a, b) for a, b in zip(normal_model.parameters(), hooked_model.parameters()))
    before, after = (r.memory["breakdown"]["measured"] for r in (normal, hooked))
    assert after["gradients"] == 0 and before["gradients"] == 8 * (512 * 512 + 512) * 4
    # Fused: the normal step's peak holds every gradient; in backward, about one layer's at a time.
    saved = before["step_peak_above_start"] - after["step_peak_above_start"]
    assert saved >= before["gradients"] - 2 * 512 * 512 * 4, (before, after)
    assert hooked.history[-1]["lr"] == normal.history[-1]["lr"]  # the LR schedule still advances


def test_in_backward_resumes_exactly(tmp_path):
    full = toy_fit(tmp_path / "full", optimizer_in_backward=True, max_grad_norm=None)
    stopped(tmp_path / "cut", optimizer_in_backward=True, max_grad_norm=None)
    resumed = toy_fit(tmp_path / "cut", resume=str(tmp_path / "cut"), optimizer_in_backward=True, max_grad_norm=None)
    assert losses(resumed) == pytest.approx(losses(full), abs=1e-6, rel=0)
