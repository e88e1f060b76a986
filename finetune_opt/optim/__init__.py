"""The optimizer registry (registry.py: one `OptimizerSpec` per optimizer) and its builder."""

from finetune_opt.optim.build import create_optimizer, describe_optimizer
from finetune_opt.optim.hf_trainer import trainer_optimizer_cls_and_kwargs, trainer_optimizers
from finetune_opt.optim.param_groups import build_param_groups, decay_parameter_names
from finetune_opt.optim.registry import REGISTRY, get_optimizer_spec, list_optimizers, runs_on
from finetune_opt.optim.spec import IMPLEMENTATION_NAMES, OptimizerSpec

__all__ = [
    "IMPLEMENTATION_NAMES", "REGISTRY", "OptimizerSpec", "build_param_groups", "create_optimizer",
    "decay_parameter_names", "describe_optimizer", "get_optimizer_spec", "list_optimizers",
    "runs_on", "trainer_optimizer_cls_and_kwargs", "trainer_optimizers",
]
