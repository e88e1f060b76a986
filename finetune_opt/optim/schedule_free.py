"""Schedule-free AdamW's "compiled" implementation: the authors' `AdamWScheduleFree` with its
per-tensor update compiled (optim/compiled.py). Imported only once `schedulefree` is known to be
installed (the spec's lazy class is loaded first).

The package's foreach step makes ten passes over memory per tensor and writes the normalised
gradient back into `p.grad`; here one kernel per tensor reads y, g, z, v once and writes y, z, v
once, and leaves `p.grad` as it was. The numbers are the package's: its scalars (warm-up, bias
correction, the averaging weight c_t) are computed by the same formulas on the host, then the
update is the package's own, y <- lerp(y, z, c) + lr (b1 (1 - c) - 1) g_hat, z <- z - lr g_hat.
State (z, exp_avg_sq) and group keys (k, lr_max, weight_sum) are the package's, so checkpoints
move between implementations and train()/eval() are unchanged.
"""

import torch
from schedulefree import AdamWScheduleFree

from finetune_opt.optim.closure import loss_from_closure
from finetune_opt.optim.compiled import CompiledUpdate


class CompiledAdamWScheduleFree(AdamWScheduleFree):

    @torch.no_grad()
    def step(self, closure=None):
        if not self.param_groups[0]["train_mode"]:  # the package's own rule, in its words
            raise Exception("Optimizer was not in train mode when step is called. Please insert .train() and "
                            ".eval() calls on the optimizer. See documentation for details.")
        loss = loss_from_closure(closure)
        for group in self.param_groups:
            scalars = _advance(group)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if "z" not in self.state[p]:
                    self.state[p]["z"] = torch.clone(p, memory_format=torch.preserve_format)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            states = [self.state[p] for p in params]
            _COMPILED_SCHEDULE_FREE((params, [p.grad for p in params], [s["z"] for s in states],
                                     [s["exp_avg_sq"] for s in states]), scalars, params[0])
        return loss


def _advance(group: dict) -> dict:
    """One step of the group's counters, as AdamWScheduleFree.step computes them; the update's scalars."""
    beta1, beta2 = group["betas"]
    k = group["k"]
    sched = (k + 1) / group["warmup_steps"] if k < group["warmup_steps"] else 1.0
    lr = group["lr"] * sched
    group["scheduled_lr"] = lr
    lr_max = group["lr_max"] = max(lr, group["lr_max"])
    weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
    weight_sum = group["weight_sum"] = group["weight_sum"] + weight
    ckp1 = weight / weight_sum if weight_sum else 0.0
    group["k"] = k + 1
    return {"lr": lr, "ckp1": ckp1, "y_step": lr * (beta1 * (1 - ckp1) - 1), "beta2": beta2,
            "bias_correction2": 1 - beta2 ** (k + 1), "eps": group["eps"], "decay": group["weight_decay"]}


def _schedule_free_update(ys, grads, zs, vs, *, lr, ckp1, y_step, beta2, bias_correction2, eps, decay):
    for y, g, z, v in zip(ys, grads, zs, vs):
        v_new = v * beta2 + (1 - beta2) * g * g
        g_hat = g / ((v_new / bias_correction2).sqrt() + eps) + decay * y
        v.copy_(v_new)
        y.copy_(y + ckp1 * (z - y) + y_step * g_hat)
        z.copy_(z - lr * g_hat)


_COMPILED_SCHEDULE_FREE = CompiledUpdate(_schedule_free_update)
