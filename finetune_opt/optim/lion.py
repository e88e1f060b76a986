"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2).

    c = beta1 * m + (1 - beta1) * g          # interpolation used for the update
    p = p * (1 - lr * wd) - lr * sign(c)     # decoupled weight decay, then a sign step
    m = beta2 * m + (1 - beta2) * g          # the one state buffer

torch.optim has no Lion, and the paper's authors publish no PyTorch package, so the update rule
lives here (twelve lines, tested against a float64 transcription of the paper's algorithm).
Every update has magnitude lr per coordinate, hence the usual advice: a learning rate 3-10x
smaller than AdamW's and a weight decay 3-10x larger.
"""

import torch
from torch.distributed.tensor import DTensor

from finetune_opt.optim.closure import loss_from_closure
from finetune_opt.optim.compiled import CompiledUpdate


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, foreach=True):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, foreach=foreach))

    @torch.no_grad()
    def step(self, closure=None):
        loss = loss_from_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                moms = [self._momentum(p) for p in params]
                self._update(group, _local(params), _local([p.grad for p in params]), _local(moms))
        return loss

    def _momentum(self, p):
        # created once (setdefault's default would allocate and zero a parameter-sized tensor
        # on every step: 78 of 185 ms of a BERT-base step)
        state = self.state[p]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p)
        return state["exp_avg"]

    def _update(self, group, params, grads, moms):
        (_multi_tensor_lion if group["foreach"] else _single_tensor_lion)(
            params, grads, moms, group["lr"], *group["betas"], group["weight_decay"])


class CompiledLion(Lion):
    """The "compiled" implementation: one Inductor kernel per tensor reads p, g, m once and writes
    p, m once (5 streams, the spec's traffic), where the foreach step makes 9 passes. A `found_inf`
    tensor set on the optimizer (as GradScaler sets it; the engine's skip of a non-finite step)
    keeps p and m as they are, decided inside the kernel."""

    def _update(self, group, params, grads, moms):
        beta1, beta2 = group["betas"]
        found_inf = getattr(self, "found_inf", None)
        _COMPILED_LION((params, grads, moms), {"lr": group["lr"], "weight_decay": group["weight_decay"],
                                               "beta1": beta1, "beta2": beta2,
                                               "skip": 0.0 if found_inf is None else found_inf.reshape(())},
                       params[0])


def _lion_update(params, grads, moms, *, lr, weight_decay, beta1, beta2, skip):
    keep = skip > 0  # where, not arithmetic: a NaN gradient times zero is still NaN
    for p, g, m in zip(params, grads, moms):
        update = (beta1 * m + (1 - beta1) * g).sign()
        p.copy_(torch.where(keep, p, p * (1 - lr * weight_decay) - lr * update))
        m.copy_(torch.where(keep, m, beta2 * m + (1 - beta2) * g))


_COMPILED_LION = CompiledUpdate(_lion_update)


def _local(tensors: list) -> list:
    """Lion is elementwise, so FSDP2's DTensor shards are stepped as their local tensors (torch 2.9's
    DTensor has no sharding rule for _foreach_lerp with a scalar weight; 2.13's has)."""
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def _single_tensor_lion(params, grads, moms, lr, beta1, beta2, weight_decay):
    for p, g, m in zip(params, grads, moms):
        update = m.lerp(g, 1 - beta1).sign_()
        p.mul_(1 - lr * weight_decay).add_(update, alpha=-lr)
        m.lerp_(g, 1 - beta2)


def _multi_tensor_lion(params, grads, moms, lr, beta1, beta2, weight_decay):
    updates = torch._foreach_lerp(moms, grads, 1 - beta1)
    torch._foreach_sign_(updates)
    torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_add_(params, updates, alpha=-lr)
    torch._foreach_lerp_(moms, grads, 1 - beta2)
