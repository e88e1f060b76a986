"""Plug a registered optimizer into `transformers.Trainer` in one line.

Two ways, both keeping this package's decay/no-decay groups (the Trainer would otherwise build its
own groups and overwrite their weight_decay with `args.weight_decay`):

    Trainer(model, args, optimizers=trainer_optimizers("adamw_fused", model, lr=2e-5))
    Trainer(model, args, optimizer_cls_and_kwargs=trainer_optimizer_cls_and_kwargs("adamw", lr=2e-5))

The second defers creation to the Trainer, which passes the model it finally trains (after any
wrapping), and lets it build its LR scheduler as usual.
"""

import functools

from finetune_opt.optim.build import create_optimizer
from finetune_opt.optim.registry import get_optimizer_spec


def trainer_optimizers(name: str, model, **kwargs):
    """`(optimizer, None)` for `Trainer(optimizers=...)`; the Trainer creates the scheduler."""
    return create_optimizer(name, model, **kwargs), None


class _TrainerOptimizerFactory:
    """Trainer treats a non-Optimizer class as a factory: `cls()(model, **kwargs)`."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, model, **kwargs):
        return create_optimizer(self.name, model, **kwargs)


def trainer_optimizer_cls_and_kwargs(name: str, **kwargs):
    """`(factory, kwargs)` for `Trainer(optimizer_cls_and_kwargs=...)` (transformers >= 5)."""
    get_optimizer_spec(name)  # fail now, not when training starts
    return functools.partial(_TrainerOptimizerFactory, name), kwargs
