"""Adafactor's fused CPU kernel (optim/kernels/adafactor.cpp) against torch's eager Adafactor, in
float64, on the cases where its shortcuts could go wrong: rows and columns of zero gradient (an
embedding's unused tokens), rows so small that the 1/eps1 clamp binds (the kernel must leave its
two-pass identity for the clip and sum the update as written), batched matrices, vectors and 0-dim
tensors, two threads splitting the rows, strided parameters, and torch's state layout both ways.
The registry's parity test (test_optim_parity.py) checks it against the paper's reference too."""

import pytest
import torch

from finetune_opt.errors import ConfigError
from finetune_opt.optim import cpu_kernels
from finetune_opt.optim.adafactor_fused import FusedAdafactor

STEPS = 5
TOLERANCE = 1e-12  # float64: measured <= 2e-14


def noise(shape, seed, scale=1.0):
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(cls, start, grads, **hp):
    params = [torch.nn.Parameter(t.clone()) for t in start]
    optimizer = cls(params, foreach=False, **hp) if cls is torch.optim.Adafactor else cls(params, **hp)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        optimizer.step()
    return params


def displacement_error(start, got, want):
    return max(((g.detach() - w.detach()).norm() / (w.detach() - s).norm()).item()
               for s, g, w in zip(start, got, want))


def random_grads(shapes, zero_rows=0, zero_cols=0, tiny_rows=0):
    """STEPS lists of gradients; in matrices the first `zero_rows` rows and `zero_cols` columns are
    zero at every step (row 0 of the last is zero at odd steps only). With `tiny_rows`, the last
    rows are scaled by 1e-17 (their R_i C_j / mean R fall below eps1^2 = 4.9e-32, so the clamp
    binds) and the others are blocks, rows 0-3 large in columns 0-15 and the rest large in the
    other columns (0.01 elsewhere): a gradient far from rank one, whose update RMS exceeds d = 1."""
    out = []
    for step in range(STEPS):
        grads = []
        for k, shape in enumerate(shapes):
            g = noise(shape, 100 * step + k)
            if len(shape) > 1:
                g[..., :zero_rows, :] = 0
                g[..., :, :zero_cols] = 0
                if tiny_rows:
                    g[..., :4, 16:] *= 0.01
                    g[..., 4:, :16] *= 0.01
                    g[..., -tiny_rows:, :] *= 1e-17
                if step % 2 and k == len(shapes) - 1:
                    g[..., zero_rows, :] = 0
            grads.append(g)
        out.append(grads)
    return out


SHAPES = [(24, 64), (96, 64), (96,), (), (3, 8, 16)]
CASES = {
    "defaults": dict(shapes=SHAPES, grads={}, hp={}),
    "zero rows and columns": dict(shapes=[(24, 64), (3, 8, 16)], grads={"zero_rows": 5, "zero_cols": 3}, hp={}),
    "clamp binds on tiny rows": dict(shapes=[(48, 64), (40,)], grads={"tiny_rows": 8}, hp={}),
    "decay, maximize, beta2_decay, d, eps": dict(
        shapes=SHAPES, grads={},
        hp={"lr": 0.05, "weight_decay": 0.1, "maximize": True, "beta2_decay": -0.5, "d": 1.5, "eps": (1e-20, 1e-2)}),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_torch_eager_adafactor(case):
    shapes, hp = CASES[case]["shapes"], {"lr": 0.01, **CASES[case]["hp"]}
    start = [noise(s, 7 + k) for k, s in enumerate(shapes)]
    grads = random_grads(shapes, **CASES[case]["grads"])
    error = displacement_error(start, run(FusedAdafactor, start, grads, **hp),
                               run(torch.optim.Adafactor, start, grads, **hp))
    print(f"{case}: displacement error {error:.1e}")
    assert error < TOLERANCE


def test_the_tiny_rows_case_needs_the_clamped_sum():
    """The case above discriminates: on its first step the clip binds (RMS(u) / d > 1) and the
    clip's sum without the clamp (the kernel's two-pass identity) is 1.12x the clamped one, so a
    kernel that always took the identity would step the matrix 5% too short, not 1e-12 off."""
    g = random_grads([(48, 64)], tiny_rows=8)[0][0]
    eps1 = torch.finfo(torch.float64).eps
    rows, cols = g.square().mean(-1), g.square().mean(-2)
    row_scales, col_scales = rows.rsqrt(), (cols / rows.mean().clamp(min=eps1)).rsqrt()
    clamped = (g * (row_scales[:, None] * col_scales).clamp(max=1 / eps1)).square().sum()
    identity = (col_scales.square() * (g.square() / rows[:, None]).sum(0)).sum()
    assert identity / clamped > 1.1
    assert (clamped / g.numel()).sqrt() > 1.05


def test_two_threads_split_the_rows():
    """4096 rows of 64 columns: the kernel's grain is 512 rows, so both threads hold column partials."""
    shapes = [(4096, 64), (64,)]
    start = [noise(s, 3 + k) for k, s in enumerate(shapes)]
    grads = random_grads(shapes, zero_rows=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fused = run(FusedAdafactor, start, grads, lr=0.01)
    finally:
        torch.set_num_threads(threads)
    assert displacement_error(start, fused, run(torch.optim.Adafactor, start, grads, lr=0.01)) < TOLERANCE


def test_a_strided_parameter_is_stepped_in_place():
    """A transposed weight: the kernel steps a contiguous copy, written back into the parameter."""
    base = noise((64, 24), 5)
    param = torch.nn.Parameter(base.clone().t())
    assert not param.is_contiguous()
    eager = torch.nn.Parameter(base.t().clone())
    fused_opt, eager_opt = FusedAdafactor([param], lr=0.01), torch.optim.Adafactor([eager], lr=0.01, foreach=False)
    for grads in random_grads([(24, 64)]):
        param.grad, eager.grad = grads[0].clone(), grads[0].clone()
        fused_opt.step()
        eager_opt.step()
    assert param.stride() == (1, 24)
    assert displacement_error([base.t()], [param], [eager]) < TOLERANCE


def test_state_is_torch_adafactors_both_ways():
    """Three eager steps, their state loaded into the fused optimizer, two more: equal to five eager
    steps (and the other way round), so a checkpoint moves between the implementations."""
    start = [noise(s, 11 + k) for k, s in enumerate(SHAPES)]
    grads = random_grads(SHAPES)
    want = run(torch.optim.Adafactor, start, grads, lr=0.01)
    for first, second in ((torch.optim.Adafactor, FusedAdafactor), (FusedAdafactor, torch.optim.Adafactor)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opts = [cls(params, lr=0.01, **({"foreach": False} if cls is torch.optim.Adafactor else {}))
                for cls in (first, second)]
        for step, step_grads in enumerate(grads):
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            if step == 3:
                opts[1].load_state_dict(opts[0].state_dict())
            opts[step >= 3].step()
        assert displacement_error(start, params, want) < TOLERANCE, first


def test_a_kernel_that_cannot_be_built_is_refused_in_one_line(monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'finetune_opt_adafactor'\nc++: not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    cpu_kernels.load_kernel.cache_clear()
    try:
        with pytest.raises(ConfigError) as e:
            FusedAdafactor([torch.nn.Parameter(torch.zeros(2, 2))])
    finally:
        cpu_kernels.load_kernel.cache_clear()  # the next test loads the real build again
    assert str(e.value) == ("could not build the C++ kernel adafactor.cpp (Error building extension "
                            "'finetune_opt_adafactor'): choose adafactor's implementation for-loop, foreach or compiled")


def test_a_missing_compiler_is_refused_at_config_validation(monkeypatch):
    """Before a model is loaded: the config names the implementation, and $CXX is not on the PATH."""
    from finetune_opt.config.run_config import RunConfig
    from finetune_opt.optim import create_optimizer

    monkeypatch.setenv("CXX", "no-such-c++")
    message = ("adafactor (fused) builds a C++ kernel on first use and needs no-such-c++ on the PATH: "
               "choose adafactor's implementation for-loop, foreach or compiled")
    with pytest.raises(ConfigError) as e:
        RunConfig(optimizer={"name": "adafactor", "implementation": "fused"}, model_config={"model_type": "bert"})
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^adafactor \(fused\) builds a C\+\+ kernel"):
        create_optimizer("adafactor", [torch.nn.Parameter(torch.zeros(2, 2))], implementation="fused")
