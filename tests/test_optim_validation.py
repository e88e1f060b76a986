"""Every validation error is a ConfigError with a one-line message naming what is valid."""

import pytest
import torch

from finetune_opt.errors import ConfigError
from finetune_opt.optim import create_optimizer, get_factory, list_optimizers


def model():
    return torch.nn.Linear(4, 2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=0), "lr must be a finite number > 0, got 0"),
    (dict(lr=-1e-3), "lr must be a finite number > 0"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(betas=(0.9, 1.0)), "betas must be two numbers in [0, 1), got (0.9, 1.0)"),
    (dict(betas=(-0.1, 0.9)), "betas must be two numbers in [0, 1)"),
    (dict(betas=(0.9,)), "betas must be two numbers in [0, 1)"),
    (dict(eps=0.0), "eps must be a finite number > 0, got 0.0"),
    (dict(weight_decay=-0.01), "weight_decay must be a finite number >= 0, got -0.01"),
    (dict(amsgrad="yes"), "amsgrad must be true or false"),
    (dict(momentum=0.9), "unknown optimizer hyperparameter 'momentum'; choose from: lr, weight_decay, betas, eps, amsgrad"),
])
def test_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ConfigError) as e:
        create_optimizer("adamw", model(), **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ConfigError, match=r"^unknown optimizer 'sgd'; choose one of: adam_l2, adamw, adamw_fused$"):
        get_factory("sgd")


def test_unknown_and_unsupported_implementation():
    with pytest.raises(ConfigError, match="unknown implementation 'cuda-graph'; choose one of: for-loop, foreach, fused, compiled"):
        create_optimizer("adamw", model(), implementation="cuda-graph")
    with pytest.raises(ConfigError, match="optimizer 'adamw_fused' has no 'foreach' implementation; choose one of: fused"):
        create_optimizer("adamw_fused", model(), implementation="foreach")


def test_fused_rejects_unsupported_device_and_dtype():
    with pytest.raises(ConfigError, match="fused implementation needs floating-point parameters on one of: .*cpu.*; got torch.float32 on meta"):
        create_optimizer("adamw_fused", torch.nn.Linear(4, 2, device="meta"))
    with pytest.raises(ConfigError, match="got torch.int64 on cpu"):
        create_optimizer("adamw_fused", [torch.zeros(3, dtype=torch.long)])


def test_no_trainable_parameters():
    m = model().requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        create_optimizer("adamw", m)


def test_list_optimizers_shows_every_factory():
    rows = {r["name"]: r for r in list_optimizers()}
    assert set(rows) == {"adam_l2", "adamw", "adamw_fused"}
    assert set(rows["adamw"]["implementations"]) == {"for-loop", "foreach", "fused", "compiled"}
    assert "cpu" in rows["adamw_fused"]["implementations"]["fused"]
