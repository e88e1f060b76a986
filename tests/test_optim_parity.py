"""Every factory and implementation matches the float64 formula; Adam-L2 and AdamW differ."""

import pytest
import torch

from finetune_opt.optim import REGISTRY, create_optimizer
from tests.reference_adam import reference_adam

STEPS = 25
HP = dict(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8)
CASES = [(name, impl) for name, f in REGISTRY.items() for impl in f.implementations]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))


def _grads(model):
    gen = torch.Generator().manual_seed(1)
    return [[torch.randn(p.shape, generator=gen) for p in model.parameters()] for _ in range(STEPS)]


def run_factory(name, impl, amsgrad=False):
    model = _model()
    opt = create_optimizer(name, model, implementation=impl, amsgrad=amsgrad, **HP)
    for grads in _grads(model):
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def run_reference(decoupled, amsgrad=False):
    model = _model()
    # Decay for weights of the two Linear layers only: biases and the LayerNorm are excluded.
    wds = [HP["weight_decay"] if n in ("0.weight", "2.weight") else 0.0 for n, _ in model.named_parameters()]
    return reference_adam(list(model.parameters()), _grads(model), lr=HP["lr"], betas=HP["betas"],
                          eps=HP["eps"], weight_decays=wds, decoupled=decoupled, amsgrad=amsgrad)


def max_rel_diff(a, b):
    return max(((x.double() - y.double()).abs().max() / y.double().abs().max()).item() for x, y in zip(a, b))


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("name,impl", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_matches_float64_reference(name, impl, amsgrad):
    got = run_factory(name, impl, amsgrad)
    want = run_reference(decoupled=REGISTRY[name].decoupled_weight_decay, amsgrad=amsgrad)
    assert max_rel_diff(got, want) < 2e-6


def test_coupled_and_decoupled_decay_differ():
    l2, decoupled = run_factory("adam_l2", "foreach"), run_factory("adamw", "foreach")
    # Same gradients, same lr and decay: only where the decay enters differs, and visibly so.
    assert max_rel_diff(l2, decoupled) > 1e-3


def test_adamw_implementations_agree():
    base = run_factory("adamw", "for-loop")
    for name, impl in [("adamw", "foreach"), ("adamw", "fused"), ("adamw", "compiled"), ("adamw_fused", "fused")]:
        assert max_rel_diff(run_factory(name, impl), base) < 1e-6, (name, impl)
