"""The closure convention of torch optimizers, for the ones written here."""

import torch


def loss_from_closure(closure):
    """`optimizer.step(closure)` re-evaluates the loss with gradients on; no closure, no loss."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
