"""Adafactor's "compiled" implementation: torch.optim.Adafactor's algorithm and state, its
per-tensor update compiled (optim/compiled.py).

torch's step materialises the full-size variance estimate R C / mean(R), its rsqrt and the update
(three parameter-sized temporaries per tensor), and reads the parameter and update norms back to
the host with `.item()` (a sync per tensor). Here nothing parameter-sized is materialised: the
update u = g / sqrt(max(R_i C_j / mean(R), eps1^2)) is recomputed from g and the two factors in the
pass that takes its norm and in the pass that applies it, and the step counter, relative step,
parameter RMS and clipping stay tensors. Passes over memory per matrix: p twice (its RMS, the
update) and written once, g for the row and column means, u's RMS and the update: six streams
where the spec counts five, and three of them reductions.
"""

import torch

from finetune_opt.optim.closure import loss_from_closure
from finetune_opt.optim.compiled import CompiledUpdate


class CompiledAdafactor(torch.optim.Adafactor):

    @torch.no_grad()
    def step(self, closure=None):
        loss = loss_from_closure(closure)
        for group in self.param_groups:
            params, grads, rows, cols, variances, steps = [], [], [], [], [], []
            self._init_group(group, params, grads, rows, cols, variances, steps)  # torch's state layout
            if not params:
                continue
            eps1, eps2 = group["eps"]
            scalars = {"lr": group["lr"], "weight_decay": group["weight_decay"], "beta2_decay": group["beta2_decay"],
                       "d": group["d"], "eps1": torch.finfo(params[0].dtype).eps if eps1 is None else eps1,
                       "eps2": eps2}
            # counted outside the graph: Inductor (torch 2.13, CPU) drops an in-place update of a
            # 0-dim float64 input (the counters are float64 under a float64 default dtype)
            torch._foreach_add_(steps, 1)
            matrices = [i for i, p in enumerate(params) if p.dim() > 1]
            for i in matrices:
                _step_matrix(params[i], grads[i], steps[i], rows[i], cols[i], scalars)
            vectors = [i for i, p in enumerate(params) if p.dim() <= 1]
            if vectors:  # small: one graph for all of them (a call per tensor costs ~0.3 ms)
                _COMPILED_VECTORS(tuple([x[i] for i in vectors] for x in (params, grads, steps, variances)),
                                  scalars, params[0])
        return loss


def _opmath(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _schedule(p, step, lr, beta2_decay, eps2):
    """(1 - beta2_t, the step size alpha from p before its decay) at this step's count."""
    t = step.to(_opmath(p))
    alpha = torch.maximum(eps2, p.to(t.dtype).square().mean().sqrt()) * torch.minimum(lr, t.rsqrt())
    return t ** beta2_decay, alpha


def _step_matrix(p, g, step, row, col, scalars):
    """Three graphs per matrix, each one pass: Inductor's code for the whole update in one graph
    ran 18.6 ms on a 3072 x 768 matrix, as three graphs 6.4 ms (one thread; an in-place add of it
    1.2 ms). Of BERT-base's ~0.35 s step, the first (p's RMS, g's row and column means) takes
    about two thirds: the column reduction runs far below streaming speed here."""
    alpha = _COMPILED_FACTORS((p, g, step, row, col), scalars, p)
    # rsqrt(max(R_i C_j / mean(R), eps1^2)) = min(rsqrt(R_i) rsqrt(C_j / mean(R)), 1 / eps1): the
    # square roots of the two factors, not of every element (rounding apart, the same number)
    eps1 = scalars["eps1"]
    row_scale, col_scale = row.rsqrt(), (col / row.mean(dim=-2, keepdim=True).clamp(min=eps1)).rsqrt()
    clip = _COMPILED_DIRECTION_RMS((g, row_scale, col_scale), {"inv_eps1": 1 / eps1, "d": scalars["d"]}, p)
    _COMPILED_APPLY((p, g, row_scale, col_scale, alpha / clip),
                    {"inv_eps1": 1 / eps1, "lr": scalars["lr"], "weight_decay": scalars["weight_decay"]}, p)


def _factors(p, g, step, row, col, *, lr, beta2_decay, eps2, **_):
    """Row and column means of g^2 into the factors; returns alpha (before clipping)."""
    weight, alpha = _schedule(p, step, lr, beta2_decay, eps2)
    square = g.to(alpha.dtype).square()
    row.copy_(row + weight * (square.mean(dim=-1, keepdim=True) - row))
    col.copy_(col + weight * (square.mean(dim=-2, keepdim=True) - col))
    return alpha


def _direction(g, row_scale, col_scale, inv_eps1):
    """u = g / sqrt(max(R_i C_j / mean(R), eps1^2)), never stored."""
    return g * torch.clamp(row_scale * col_scale, max=inv_eps1)


def _direction_rms(g, row_scale, col_scale, *, inv_eps1, d):
    """max(1, RMS(u) / d): torch's update clipping."""
    return torch.clamp(_direction(g, row_scale, col_scale, inv_eps1).square().mean().sqrt() / d, min=1.0)


def _apply_direction(p, g, row_scale, col_scale, size, *, inv_eps1, lr, weight_decay):
    p.copy_(p * (1 - lr * weight_decay) - size * _direction(g, row_scale, col_scale, inv_eps1))


def _vectors(params, grads, steps, variances, *, lr, weight_decay, beta2_decay, d, eps1, eps2):
    for p, g, step, variance in zip(params, grads, steps, variances):
        weight, alpha = _schedule(p, step, lr, beta2_decay, eps2)
        variance.copy_(torch.lerp(variance, g * g, weight.to(variance.dtype)))
        u = g * variance.clamp(min=eps1 * eps1).rsqrt()
        denom = torch.clamp(u.square().mean().sqrt() / d, min=1.0)
        p.copy_(p * (1 - lr * weight_decay) - (alpha / denom) * u)


_COMPILED_FACTORS = CompiledUpdate(_factors)
_COMPILED_DIRECTION_RMS = CompiledUpdate(_direction_rms)
_COMPILED_APPLY = CompiledUpdate(_apply_direction)
_COMPILED_VECTORS = CompiledUpdate(_vectors)
