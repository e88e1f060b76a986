"""Optimizer factories behind one registry (see registry.py to add one)."""

from finetune_opt.optim.hf_trainer import trainer_optimizer_cls_and_kwargs, trainer_optimizers
from finetune_opt.optim.param_groups import build_param_groups, decay_parameter_names
from finetune_opt.optim.registry import (
    HYPERPARAMETERS,
    IMPLEMENTATIONS,
    REGISTRY,
    AdamHyperparams,
    create_optimizer,
    get_factory,
    list_optimizers,
)

__all__ = [
    "HYPERPARAMETERS", "IMPLEMENTATIONS", "REGISTRY", "AdamHyperparams", "build_param_groups",
    "create_optimizer", "decay_parameter_names", "get_factory", "list_optimizers",
    "trainer_optimizer_cls_and_kwargs", "trainer_optimizers",
]
