"""Optimizer step in backward (Lv et al. 2023, "Full Parameter Fine-tuning for Large Language
Models with Limited Resources" (LOMO); torchtune's `optimizer_in_bwd`): each parameter is updated
by a hook the moment its gradient is complete, and that gradient is freed at once, so the whole
set of gradients never exists together. The peak drops by up to the gradients' size.

The same optimizer object does the work (one state, one LR schedule, one checkpoint format): at
the moment a parameter's hook runs, every parameter stepped before it has had its gradient set to
None and every later one has none yet, and torch optimizers skip parameters without a gradient,
so `optimizer.step()` updates exactly that one parameter. What this cannot do is refused at
set-up (`refusal`): anything that needs all gradients before the first update.
"""

import torch

from finetune_opt.optim.spec import OptimizerSpec


def refusal(spec: OptimizerSpec, implementation: str, *, grad_accum: int, max_grad_norm, mixed_precision: str,
            num_processes: int) -> str | None:
    """Why optimizer_in_backward cannot run this configuration, or None if it can."""
    reasons = {
        "grad_accum > 1 (the first micro-batch's gradients would already be applied)": grad_accum > 1,
        "max_grad_norm (clipping needs the norm of all gradients before any update): set max_grad_norm=null":
            max_grad_norm is not None,
        "mixed_precision fp16 (GradScaler must see every gradient for overflow before stepping)":
            mixed_precision == "fp16",
        "more than one process (DDP reduces gradients after these hooks have run)": num_processes > 1,
        f"{spec.name} (its step keeps per-group counters that one step per parameter would advance many times)":
            spec.train_eval_modes,
        f"implementation {implementation} (one compiled graph per parameter set would recompile per parameter)":
            spec.implementations[implementation].compile_step,
    }
    found = [reason for reason, applies in reasons.items() if applies]
    return f"optimizer_in_backward cannot run with {'; '.join(found)}" if found else None


def step_in_backward(optimizer: torch.optim.Optimizer) -> list:
    """Hook every parameter of `optimizer` to be stepped, and its gradient freed, as soon as its
    gradient is accumulated. Returns the hook handles (`.remove()` them to undo)."""
    def step_this_parameter(param):
        optimizer.step()
        param.grad = None

    params = {id(p): p for group in optimizer.param_groups for p in group["params"]}.values()
    return [p.register_post_accumulate_grad_hook(step_this_parameter) for p in params]
