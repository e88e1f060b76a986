"""load_state_dict cannot change the factory's algorithm or kernel (torch copies group flags)."""

import pytest
import torch

from finetune_opt.errors import ConfigError
from finetune_opt.optim import create_optimizer


def trained(name, impl, amsgrad=False):
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 2)
    opt = create_optimizer(name, m, implementation=impl, lr=1e-2, amsgrad=amsgrad)
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    return m, opt


def test_fused_flag_survives_loading_a_foreach_checkpoint():
    _, foreach_opt = trained("adamw", "foreach")
    m, fused_opt = trained("adamw_fused", "fused")
    fused_opt.load_state_dict(foreach_opt.state_dict())
    for g in fused_opt.param_groups:
        assert g["fused"] is True and g["foreach"] is False and g["decoupled_weight_decay"] is True
    # The state itself did load: exp_avg equals the checkpoint's.
    saved = foreach_opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fused_opt.state[m.weight]["exp_avg"], saved)


def test_coupled_l2_survives_loading_an_adamw_checkpoint():
    _, adamw = trained("adamw", "foreach")
    _, adam_l2 = trained("adam_l2", "for-loop")
    adam_l2.load_state_dict(adamw.state_dict())
    assert all(g["decoupled_weight_decay"] is False and g["foreach"] is False for g in adam_l2.param_groups)


def test_plain_torch_does_overwrite_flags():
    # The behaviour the hook exists for: without it the checkpoint's flags win.
    m, foreach_opt = trained("adamw", "foreach")
    plain = torch.optim.AdamW([{"params": [m.weight]}, {"params": [m.bias]}], fused=True)
    plain.load_state_dict(foreach_opt.state_dict())
    assert plain.param_groups[0]["fused"] is not True


def test_amsgrad_mismatch_is_an_error():
    _, plain = trained("adamw", "foreach", amsgrad=False)
    _, ams = trained("adamw", "foreach", amsgrad=True)
    with pytest.raises(ConfigError, match="checkpoint was saved with amsgrad=False"):
        ams.load_state_dict(plain.state_dict())


def test_compiled_keeps_tensor_lr_after_loading():
    _, foreach_opt = trained("adamw", "foreach")
    _, compiled = trained("adamw", "compiled")
    compiled.load_state_dict(foreach_opt.state_dict())
    assert torch.is_tensor(compiled.param_groups[0]["lr"])
