"""Plug a registered optimizer into `transformers.Trainer` in one line.

Two ways, both keeping this package's decay/no-decay groups (the Trainer would otherwise build its
own groups and overwrite their weight_decay with `args.weight_decay`):

    Trainer(model, args, optimizers=trainer_optimizers("adamw_fused", model, lr=2e-5))
    Trainer(model, args, optimizer_cls_and_kwargs=trainer_optimizer_cls_and_kwargs("adamw", lr=2e-5))

The second defers creation to the Trainer, which passes the model it finally trains (after any
wrapping), and lets it build its LR scheduler as usual.

Schedule-free optimizers train on one iterate (y) and are evaluated and saved at another (x, the
average). The Trainer switches to x only to evaluate (it calls `optimizer.eval()` there, and
`optimizer.train()` before each training step), so its checkpoints and `save_model` would hold y.
Both plugs therefore hook the model: reading its weights (`state_dict()`, which every save goes
through) switches the optimizer to x first, and weights loaded into it (a resume, the best model at
the end) are taken as x, which the next training step turns back into y. A TrainerCallback cannot
do this from a plug: the Trainer takes callbacks only from its own arguments.
"""

import functools
import weakref

from finetune_opt.optim.build import create_optimizer
from finetune_opt.optim.registry import get_optimizer_spec

_HOOKS = "_finetune_opt_averaged_weight_hooks"  # the model attribute holding the current hooks


def trainer_optimizers(name: str, model, **kwargs):
    """`(optimizer, None)` for `Trainer(optimizers=...)`; the Trainer creates the scheduler."""
    return _saving_averaged_weights(model, create_optimizer(name, model, **kwargs)), None


def _saving_averaged_weights(model, optimizer):
    """For optimizers with train/eval modes: the model's weights, when saved, are x (module doc).
    A later plug on the same model replaces the hooks, so a stale optimizer never touches it."""
    for handle in getattr(model, _HOOKS, ()):
        handle.remove()
    if not get_optimizer_spec(optimizer.finetune_opt["name"]).train_eval_modes:
        return optimizer
    ref = weakref.ref(optimizer)  # the model must not keep a discarded optimizer alive

    def to_averaged(module, prefix, keep_vars):
        if ref() is not None:
            ref().eval()  # y -> x; a no-op when already in eval mode

    def loaded_as_averaged(module, *args):
        if ref() is not None:  # the weights now are x: mark eval mode (schedulefree keeps it per
            for group in ref().param_groups:  # group) without converting them as eval() would
                group["train_mode"] = False

    setattr(model, _HOOKS, (model.register_state_dict_pre_hook(to_averaged),
                                       model.register_load_state_dict_pre_hook(loaded_as_averaged)))
    return optimizer


class _TrainerOptimizerFactory:
    """Trainer treats a non-Optimizer class as a factory: `cls()(model, **kwargs)`."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, model, **kwargs):
        return _saving_averaged_weights(model, create_optimizer(self.name, model, **kwargs))


def trainer_optimizer_cls_and_kwargs(name: str, **kwargs):
    """`(factory, kwargs)` for `Trainer(optimizer_cls_and_kwargs=...)` (transformers >= 5)."""
    get_optimizer_spec(name)  # fail now, not when training starts
    return functools.partial(_TrainerOptimizerFactory, name), kwargs
