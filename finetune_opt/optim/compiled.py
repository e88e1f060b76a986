"""Compiled updates for the entries torch has no fused kernel for (Lion, schedule-free AdamW,
Adafactor): each is a plain per-tensor update over a group's whole parameter list, written with
out-of-place math and `copy_` into the parameters and states, compiled by Inductor into one kernel
per tensor (per reduction for Adafactor) that reads and writes each buffer once.

Why not the class's own step under torch.compile (`build._CompiledStepMixin`, Adam's "compiled")?
These steps compute Python floats from step counters (schedule-free's averaging weight, Adafactor's
relative step and `.item()` norms), which would recompile or break the graph every step. Here every
number that changes is a 0-dim tensor argument, filled each step: one graph per group's
list of shapes, reused by every instance with those shapes (dynamo guards on shapes, not values).

Never an eager fallback: `fullgraph=True` raises on a graph break, and hitting the recompile limit
raises too (`fail_on_recompile_limit_hit`) instead of running the rest of the process eagerly, which
would turn a "compiled" timing into an eager one. The limit is raised for these functions, as each
distinct list of parameter shapes (a model's decay and no-decay groups) is one graph.
"""

import torch
import torch._dynamo

# Graphs one process may compile per update function: one per distinct list of parameter shapes
# (two per model: decay and no-decay groups), or per matrix shape for Adafactor's per-tensor ones.
RECOMPILE_LIMIT = 64


class CompiledUpdate:
    """`fn(*tensors, **scalars)` (tensors or lists of them) compiled whole, its result returned;
    scalars given as Python numbers are passed as 0-dim tensors on the parameters' device (values change, graphs do not), in the dtype the
    update computes in: float64 for float64 parameters (exact parity), else float32 (a float64
    scalar would make Inductor compute the whole kernel in float64: 62% of the bandwidth of the
    float32 one, measured on Lion)."""

    def __init__(self, fn):
        self.fn = torch.compile(fn, fullgraph=True, dynamic=False)
        self._scalars = {}

    def __call__(self, tensors: tuple, scalars: dict, like: torch.Tensor):
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        holders = self._scalars.setdefault((like.device, dtype), {})
        for key, value in scalars.items():
            if key not in holders:
                holders[key] = torch.zeros((), dtype=dtype, device=like.device)
            holders[key].fill_(value)  # a number, or a 0-dim device tensor (copied on the device: no wait)
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
            return self.fn(*tensors, **{k: holders[k] for k in scalars})
