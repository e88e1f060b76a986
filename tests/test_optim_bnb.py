"""bitsandbytes' 8-bit entries: the state bytes their spec predicts are the bytes they hold, exactly,
in each dtype they take (uint8 moments with one fp32 absmax per 256 elements above 4096 elements,
fp32 moments below, whatever the parameter dtype), on the devices they run on here. Parity with
float AdamW / Lion is tests/test_optim_parity.py's (registry-parametrised); the missing-package
refusal is tests/test_optim_validation.py's."""

import importlib.util
import math

import pytest
import torch

from finetune_opt.measure.timing import optimizer_state_bytes
from finetune_opt.optim import REGISTRY, create_optimizer

BNB = [name for name, spec in REGISTRY.items() if spec.extra == "bnb"]
HERE = [name for name in BNB if REGISTRY[name].supports(REGISTRY[name].default_implementation, "cpu")]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                reason="bitsandbytes is not installed (pip install 'finetune_opt[bnb]')")


def model(dtype):
    """Tensors below, at and above the 8-bit threshold, one not a multiple of the 256-element block."""
    shapes = [(7,), (64, 64), (4096,), (100, 123), (3, 5)]
    params = [torch.nn.Parameter(torch.randn(s, dtype=dtype) * 0.1) for s in shapes]
    return torch.nn.ParameterList(params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", HERE)
def test_state_bytes_predicted_equal_measured(name, dtype):
    m = model(dtype)
    opt = create_optimizer(name, list(m.parameters()))
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    predicted, measured = REGISTRY[name].state_bytes_for(opt.param_groups), optimizer_state_bytes(opt)
    moments = 2 if "adam" in name else 1
    by_hand = moments * sum(
        4 * n if n < 4096 else n + 4 * math.ceil(n / 256) + 4 * 256 for n in (7, 4096, 4096, 12300, 15))
    assert predicted == measured == by_hand
    states = [opt.state[p] for p in m.parameters()]
    assert states[0]["state1"].dtype == torch.float32 and states[1]["state1"].dtype == torch.uint8


@pytest.mark.parametrize("name", HERE)
def test_bfloat16_steps_move_the_weights_like_float32(name):
    """bf16 parameters (what a memory-saving user runs) step to within bf16 rounding of fp32."""
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        m = model(dtype)
        start = [p.detach().float().clone() for p in m.parameters()]
        opt = create_optimizer(name, list(m.parameters()), lr=1e-2)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            opt.step()
        results.append([p.detach().float() - s for p, s in zip(m.parameters(), start)])
    for fp32, bf16 in zip(*results):
        assert (bf16 - fp32).norm() / fp32.norm() < 0.05
