"""Adafactor's "compiled" implementation: torch.optim.Adafactor's algorithm and state, its
per-tensor update compiled (optim/compiled.py).

torch's step materialises the full-size variance estimate R C / mean(R), its rsqrt and the update
(three parameter-sized temporaries per tensor), and reads the parameter and update norms back to
the host with `.item()` (a sync per tensor). Here nothing parameter-sized is materialised: the
update u = g / sqrt(max(R_i C_j / mean(R), eps1^2)) is recomputed from g and the two factors in the
pass that takes its norm and in the pass that applies it, and the step counter, relative step,
parameter RMS and clipping stay tensors.

Each matrix's whole update is one graph (`_matrix`), six matrices to a compiled call (a call costs
~0.3 ms; BERT-base has 75 matrices). Passes over memory per matrix, one after the other so a
matrix's later passes can find it in cache: p's sum of squares, g^2's row sums, g^2's column sums
(in blocks of rows), u's sum of squares (the clip), the update (read p and g, write p). The exact
algorithm needs at least six streams (p twice and written once; g three times: the factors, the
clip, the update) where the spec counts five, and here g's row and column sums are two passes:
Inductor (torch 2.13, CPU) emits a loop nest per reduction and fuses neither these two nor p's
with g's. BERT-base fp32, one thread, this 2-core AVX2 machine (benchmarks/results/cpu_2core/
optimizer_step_adafactor): 310 ms (23% of the roofline) as three graphs per matrix, 143 ms (40%)
so; reads here stream at ~17-20 GB/s against the in-place add's 30 GB/s, so even six streams each
at the read speed would be ~2/3 of the roofline.
"""

import torch

from finetune_opt.optim.closure import loss_from_closure
from finetune_opt.optim.compiled import CompiledUpdate


class AdafactorOwnUpdate(torch.optim.Adafactor):
    """torch's Adafactor, state layout and all, with each group's update done by `_update` (the
    compiled step here, the C++ kernel in adafactor_fused.py)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = loss_from_closure(closure)
        for group in self.param_groups:
            params, grads, rows, cols, variances, steps = [], [], [], [], [], []
            self._init_group(group, params, grads, rows, cols, variances, steps)  # torch's state layout
            if params:
                self._update(group, params, grads, rows, cols, variances, steps)
        return loss

    def _update(self, group, params, grads, rows, cols, variances, steps):
        """Count the step (`steps`: each tensor's 0-dim counter) and update the group's tensors."""
        raise NotImplementedError


class CompiledAdafactor(AdafactorOwnUpdate):

    def _update(self, group, params, grads, rows, cols, variances, steps):
        # counted outside the graph: Inductor (torch 2.13, CPU) drops an in-place update of a 0-dim
        # float64 input (the counters are float64 under a float64 default dtype)
        torch._foreach_add_(steps, 1)
        eps1, eps2 = group["eps"]
        scalars = {"lr": group["lr"], "weight_decay": group["weight_decay"], "beta2_decay": group["beta2_decay"],
                   "d": group["d"], "eps1": torch.finfo(params[0].dtype).eps if eps1 is None else eps1,
                   "eps2": eps2}
        matrices = [i for i, p in enumerate(params) if p.dim() > 1]
        for start in range(0, len(matrices), MATRICES_PER_GRAPH):
            chunk = matrices[start:start + MATRICES_PER_GRAPH]
            _COMPILED_MATRICES(tuple([x[i] for i in chunk] for x in (params, grads, steps, rows, cols)),
                               scalars, params[chunk[0]])
        vectors = [i for i, p in enumerate(params) if p.dim() <= 1]
        if vectors:  # small: one graph for all of them (a call per tensor costs ~0.3 ms)
            _COMPILED_VECTORS(tuple([x[i] for i in vectors] for x in (params, grads, steps, variances)),
                              scalars, params[0])


def _opmath(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _schedule(p, step, lr, beta2_decay, eps2):
    """(1 - beta2_t, the step size alpha from p before its decay) at this step's count."""
    t = step.to(_opmath(p))
    alpha = torch.maximum(eps2, p.to(t.dtype).square().mean().sqrt()) * torch.minimum(lr, t.rsqrt())
    return t ** beta2_decay, alpha


# Inductor options for these graphs only (torch.compile's `options`, not the global config):
# - realize_reads_threshold=0: a small intermediate read twice (the row and column scales, each read
#   by the clip's reduction and by the update) is computed once into a buffer; by default Inductor
#   inlines it, recomputing a division and a square root per element of the matrix in both passes
# - cpp.max_horizontal_fusion_size=1: a list of matrices is not fused into one loop over all of
#   them (ten same-shape matrices' updates in one loop ran at half the bandwidth: 30 streams at once)
_OPTIONS = {"realize_reads_threshold": 0, "cpp.max_horizontal_fusion_size": 1}
MATRICES_PER_GRAPH = 6  # matrices per compiled call (below)
_ROW_BLOCK = 16  # rows per block of the column sums (below)


class _CompiledWithOptions(CompiledUpdate):
    def __init__(self, fn):
        super().__init__(fn)
        self.fn = torch.compile(fn, fullgraph=True, dynamic=False, options=_OPTIONS)


def _column_sums_of_squares(x: torch.Tensor) -> torch.Tensor:
    """x^2 summed over dim -2 (kept), in blocks of rows: Inductor reduces over dim -2 one column
    vector at a time down the whole matrix, a row's stride per load (2.76 ms on a 3072 x 768 matrix,
    an in-place add of it ~1 ms); as (R/16, 16, C) it sums 16 rows a block, the block in cache, then
    the R/16 block sums (1.16 ms). Those block sums are the step's one temporary: 1/16 of the
    matrix being stepped (5.6 MiB for BERT's 30522 x 768 embedding)."""
    rows = x.shape[-2]
    k = min(_ROW_BLOCK, rows)
    whole = rows - rows % k
    # squared per piece: one x^2 read by both pieces would be stored (a matrix-sized buffer)
    sums = x.narrow(-2, 0, whole).unflatten(-2, (whole // k, k)).square().sum(-2).sum(-2, keepdim=True)
    if whole < rows:
        sums = sums + x.narrow(-2, whole, rows - whole).square().sum(-2, keepdim=True)
    return sums


def _matrix(p, g, step, row, col, *, lr, weight_decay, beta2_decay, d, eps1, eps2):
    """One matrix's whole update, one graph: p's sum of squares, g^2's row and column sums (the
    factors), the factors' inverse square roots (a row and a column vector, computed once), the
    clip's sum of u^2, the update. Returns the step size and decay (scalars read by the update:
    returned, Inductor computes them once instead of per element)."""
    t = step.to(_opmath(p))
    # whole-matrix sums as row sums, then their sum: a single reduction over all elements is
    # Inductor's cascade summation, ~1.8x slower for u's (13.9 vs 7.6 ms over ten 3072 x 768)
    p_squares = p.to(t.dtype).square().sum(-1).sum()
    alpha = torch.maximum(eps2, (p_squares / p.numel()).sqrt()) * torch.minimum(lr, t.rsqrt())
    weight = t ** beta2_decay
    row_new = row + weight * (g.to(t.dtype).square().sum(-1, keepdim=True) / g.shape[-1] - row)
    col_new = col + weight * (_column_sums_of_squares(g.to(t.dtype)) / g.shape[-2] - col)
    row.copy_(row_new)
    col.copy_(col_new)
    # rsqrt(max(R_i C_j / mean(R), eps1^2)) = min(rsqrt(R_i) rsqrt(C_j / mean(R)), 1 / eps1): the
    # square roots of the two factors, not of every element (rounding apart, the same number)
    row_scale = row_new.rsqrt()
    col_scale = (col_new / row_new.mean(dim=-2, keepdim=True).clamp(min=eps1)).rsqrt()
    inv_eps1 = 1 / eps1
    # u written twice: one expression read by both passes would be stored (a matrix-sized buffer)
    u_squares = _direction(g, row_scale, col_scale, inv_eps1).square().sum(-1).sum()
    clip = torch.clamp((u_squares / g.numel()).sqrt() / d, min=1.0)
    size, decay = alpha / clip, 1 - lr * weight_decay
    p.copy_(p * decay - size * _direction(g, row_scale, col_scale, inv_eps1))
    return size, decay


def _matrices(params, grads, steps, rows, cols, **scalars):
    return [_matrix(*tensors, **scalars) for tensors in zip(params, grads, steps, rows, cols)]


def _direction(g, row_scale, col_scale, inv_eps1):
    """u = g / sqrt(max(R_i C_j / mean(R), eps1^2)), never stored."""
    return g * torch.clamp(row_scale * col_scale, max=inv_eps1)


def _vectors(params, grads, steps, variances, *, lr, weight_decay, beta2_decay, d, eps1, eps2):
    for p, g, step, variance in zip(params, grads, steps, variances):
        weight, alpha = _schedule(p, step, lr, beta2_decay, eps2)
        variance.copy_(torch.lerp(variance, g * g, weight.to(variance.dtype)))
        u = g * variance.clamp(min=eps1 * eps1).rsqrt()
        denom = torch.clamp(u.square().mean().sqrt() / d, min=1.0)
        p.copy_(p * (1 - lr * weight_decay) - (alpha / denom) * u)


_COMPILED_MATRICES = _CompiledWithOptions(_matrices)
_COMPILED_VECTORS = CompiledUpdate(_vectors)
