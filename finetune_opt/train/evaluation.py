"""The evaluation loop every recipe shares: eval mode without gradients, each batch's outputs
gathered across ranks with gather_for_metrics (which drops the samples padded onto the last batch
so that every rank had one), concatenated on the CPU, then scored by the recipe's own metric."""

from contextlib import contextmanager

import torch


@contextmanager
def eval_mode(model):
    """model.eval() and no gradients inside; back to training mode after, however it ends."""
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train()


def gather_batches(loader, accelerator, per_batch) -> tuple[torch.Tensor, ...]:
    """per_batch(batch) -> a tensor or a tuple of tensors (first dimension: examples), for every
    batch of `loader`, gathered over ranks and concatenated: one tensor per output."""
    parts = []
    for batch in loader:
        out = per_batch(batch)
        out = out if isinstance(out, tuple) else (out,)
        parts.append(tuple(t.cpu() for t in accelerator.gather_for_metrics(out)))
    return tuple(torch.cat(p) for p in zip(*parts))


def evaluate_splits(model, loaders: dict, accelerator, per_batch, score) -> dict:
    """{metric: value} over every split: score(split, *gather_batches(loader, accelerator, per_batch))."""
    metrics = {}
    with eval_mode(model):
        for split, loader in loaders.items():
            metrics.update(score(split, *gather_batches(loader, accelerator, per_batch)))
    return metrics
