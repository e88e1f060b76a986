"""Whole-matrix optimizers on FSDP2 shards.

Muon orthogonalises a whole matrix (Newton-Schulz) and Adafactor factors a whole matrix's second
moment into row and column statistics; FSDP2 gives each rank a block of rows (a DTensor sharded on
dim 0). Run on those blocks, both would compute something else (Muon: the orthogonalisation of
each block; Adafactor: column statistics of half the rows). So, one parameter at a time, each
rank gathers the parameter, its gradient and its state, runs the optimizer's own unchanged step
on the whole tensors, and keeps its rows of the results:

- the update is exactly the single-device one (every rank computes it; the price is one
  all-gather of parameter, gradient and row state per matrix, and the step's compute on every rank);
- state stays sharded, as DTensors, so each rank holds 1/N of it and sharded checkpoints save it
  as such: with the parameter's rows where it has them (Muon's momentum, Adafactor's row
  statistics and its vectors' second moments), else along its longest dimension (Adafactor's
  column statistics); only scalars (step counts) are whole on every rank;
- peak memory above the shards is one whole matrix with its gradient and state, not the model.

This is the "gather" variant of sharded Muon; torchtitan's owner-rank variant computes each
matrix once but needs an update scatter. Elementwise optimizers need none of this: FSDP2 steps
their shards directly.
"""

import torch
from torch.distributed.tensor import DTensor, Shard, distribute_tensor


def step_on_whole_tensors(optimizer: torch.optim.Optimizer) -> None:
    """Make `optimizer.step()` step each DTensor parameter on its gathered whole tensor."""
    sharded_step = optimizer.step

    @torch.no_grad()
    def step(closure=None):
        if closure is not None:
            raise ValueError("a closure cannot be re-evaluated per gathered parameter")
        for group in optimizer.param_groups:
            for index, param in enumerate(group["params"]):
                if param.grad is not None:
                    _step_one(optimizer, sharded_step, group, index, param)

    optimizer.step = step


def _step_one(optimizer, step, group: dict, index: int, param: torch.Tensor) -> None:
    """Step `param` alone: every group empty but its own, which holds its whole tensor."""
    whole = _gather(param)
    whole.grad = _gather(param.grad)
    if param in optimizer.state:
        optimizer.state[whole] = {k: _gather(v) for k, v in optimizer.state.pop(param).items()}
    all_params = [g["params"] for g in optimizer.param_groups]
    try:
        for g in optimizer.param_groups:
            g["params"] = [whole] if g is group else []
        step()
    finally:
        for g, params in zip(optimizer.param_groups, all_params):
            g["params"] = params
        if isinstance(param, DTensor):
            param.to_local().copy_(_rows(whole, param))
        else:
            param.copy_(whole)
        if whole in optimizer.state:
            optimizer.state[param] = {k: _keep(v, whole, param) for k, v in optimizer.state.pop(whole).items()}
    group["params"][index] = param


def _gather(t):
    return t.full_tensor() if isinstance(t, DTensor) else t.detach().clone() if torch.is_tensor(t) else t


def _rows(whole: torch.Tensor, like: DTensor) -> torch.Tensor:
    """This rank's rows of `whole`, placed as `like` is (no communication: every rank has `whole`)."""
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None).to_local()


def _keep(value, whole: torch.Tensor, param: torch.Tensor):
    """A state tensor back to a shard: with the parameter's rows, as the parameter is placed; any
    other (Adafactor's column statistics) split along its longest dimension; scalars (step
    counts) stay whole, the same on every rank."""
    if not (torch.is_tensor(value) and isinstance(param, DTensor) and value.numel() > 1):
        return value
    if value.ndim >= 1 and whole.ndim >= 1 and value.shape[0] == whole.shape[0]:
        placements = param.placements
    else:
        placements = [Shard(max(range(value.ndim), key=lambda d: value.shape[d]))]
    return distribute_tensor(value, param.device_mesh, placements, src_data_rank=None)
