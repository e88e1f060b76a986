"""Adafactor's "fused" implementation on CPU: torch.optim.Adafactor's algorithm and state, each
tensor's whole step in one C++ call (kernels/adafactor.cpp, built on first use: cpu_kernels.py).

Why C++: the exact step needs three global results before the update, each a reduction over the
whole matrix (the row and column factors, then the RMS of the update for the clip), and Inductor
(torch 2.13, CPU) emits one loop nest per reduction: at best six to seven passes over memory (the
compiled implementation, adafactor.py). Here a factored tensor takes two:

1. Row by row: p's sum of squares; g^2's row sum, hence the new row factor R_i; then, with the row
   still in L1, g^2's column sums and the column sums of g^2 / R_i.
2. The update: p <- p (1 - lr wd) - size g min(rsqrt(R_i) rsqrt(C_j / mean R), 1/eps1).

The clip needs sum_ij u_ij^2 with u_ij = g_ij min(rs_i cs_j, 1/eps1), rs_i = rsqrt(R_i),
cs_j = rsqrt(C_j / mean R). Without the clamp that is sum_j cs_j^2 sum_i g_ij^2 / R_i: the second
column sums, once cs is known, with no pass over g. The clamp binds only where R_i C_j / mean R <
eps1^2 (a row or column of tiny or zero gradient). Pass 1 records the largest rs_i over the rows
whose sum of g^2 is nonzero and the largest cs_j over such columns: when their product is at most
1/eps1 the clamp cannot bind on them and the identity is exact; otherwise (or with a NaN) one more
pass over g sums the u^2 as written. A row or column whose g^2 sums to zero adds nothing to the
identity's sum; as written it adds (g/eps1)^2 per element, which is zero unless its g underflowed
on squaring (|g| < 4e-23 in float32): then at most 1e-31 per element, below the rounding of a sum
that could make the clip bind (RMS(u) > d >= 1). That is the spec's five streams (p read twice and
written once, g read twice).

Column partials are summed in the compute type for 64 rows at a time, then in float64, four rows
per sweep over the partials (a sweep's loads and stores, one store a cycle, are what bound pass 1
after memory); a row's sums keep 32 independent lanes. Threads (torch's intra-op pool) split the
rows, each with its own column partials. Vectors (biases, norms) keep a full second moment and
take two passes too.
"""

import torch

from finetune_opt.optim.cpu_kernels import load_kernel
from finetune_opt.optim.adafactor import AdafactorOwnUpdate


class FusedAdafactor(AdafactorOwnUpdate):

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from finetune_opt.optim.registry import REGISTRY  # which names this class: imported at use

        # at set-up: a failed build stops here, not mid-run
        load_kernel("adafactor", REGISTRY["adafactor"].instead_of("fused"))

    def _update(self, group, params, grads, rows, cols, variances, steps):
        # The kernel counts the step, or skips it all where the engine set `found_inf` (train/skips.py).
        # It steps contiguous memory: a strided parameter is stepped as a copy, written back
        contiguous = [p.contiguous() for p in params]
        grads = [g.contiguous() for g in grads]
        none = torch.empty(0)
        eps1, eps2 = group["eps"]
        torch.ops.finetune_opt_adafactor.step(
            contiguous, grads, [none if r is None else r for r in rows], [none if c is None else c for c in cols],
            [none if v is None else v for v in variances], steps, float(group["lr"]), group["weight_decay"],
            group["beta2_decay"], group["d"], eps1, eps2, group["maximize"],
            getattr(self, "found_inf", None))
        for p, stepped in zip(params, contiguous):
            if stepped is not p:
                p.copy_(stepped)
