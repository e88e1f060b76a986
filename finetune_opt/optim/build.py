"""Build a registered optimizer: spec + user values -> a torch optimizer that a checkpoint cannot
silently change.

    from finetune_opt import create_optimizer
    opt = create_optimizer("lion", model, lr=1e-5, weight_decay=0.1, betas=(0.9, 0.99))
"""

import importlib

import torch
from torch import nn
from torch._dynamo.utils import counters as _dynamo_counters

from finetune_opt.errors import ConfigError
from finetune_opt.optim.param_groups import build_param_groups
from finetune_opt.optim.registry import REGISTRY, get_optimizer_spec
from finetune_opt.optim.spec import OptimizerSpec

# Every group records the registry entry that built it, so a state dict says which algorithm's
# state it holds (torch keeps group keys in state_dict() and nothing else would tell).
NAME_KEY = "finetune_opt_name"
# Group keys that select the algorithm or the kernel; torch's load_state_dict copies them from
# the checkpoint, so they are put back after loading.
_FLAG_KEYS = ("foreach", "fused", "decoupled_weight_decay", "capturable", "differentiable", NAME_KEY)


def create_optimizer(name: str, model_or_params, *, implementation: str | None = None,
                     **hyperparams) -> torch.optim.Optimizer:
    """Optimizer `name` for a model (its spec's parameter groups: by default decay / no-decay, as
    the HF Trainer splits them) or for explicit parameters / param groups. Hyperparameters are
    that optimizer's own (see `finetune-opt list-optimizers`); missing ones take the defaults, and
    a missing implementation the entry's default on the parameters' device."""
    spec = get_optimizer_spec(name)
    spec.resolve_implementation(implementation)  # an unknown name fails before the groups are built
    hp = spec.validate(hyperparams)
    groups = _param_groups(spec, model_or_params, hp)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ConfigError("the model has no trainable parameters to optimize")
    implementation = spec.resolve_implementation(implementation, params[0].device.type)
    spec.check_installed(implementation)  # a missing package first: no device or dtype would make it run
    spec.check_parameters(implementation, params)

    impl = spec.implementations[implementation]
    cls = _implementation_class(spec, impl)
    kwargs = {**hp, **spec.fixed_kwargs, **impl.flags}
    optimizer = spec.build(cls, groups, kwargs) if spec.build else cls(groups, **kwargs)
    for group in optimizer.param_groups:
        group[NAME_KEY] = name
    _guard_loading(optimizer, spec)
    if spec.train_eval_modes:
        optimizer.train()  # schedule-free: parameters hold the training iterate y
    optimizer.finetune_opt = {"name": name, "implementation": implementation}
    return optimizer


def planned_param_groups(name: str, model, implementation: str | None = None, **hyperparams) -> list[dict]:
    """The parameter groups `create_optimizer` would build, each holding its hyperparameters as the
    built optimizer's groups do (defaults filled in), without building the optimizer: what the
    spec's cost model reads. For `finetune-opt plan`, on a model on the meta device."""
    spec = get_optimizer_spec(name)
    implementation = spec.resolve_implementation(implementation)
    hp = spec.validate(hyperparams)
    defaults = {**hp, **spec.fixed_kwargs, **spec.implementations[implementation].flags}
    return [{**defaults, **g} for g in _param_groups(spec, model, hp)]


def _implementation_class(spec: OptimizerSpec, impl) -> type:
    cls = spec.load_class()
    if impl.subclass:
        module, _, name = impl.subclass.partition(":")
        return getattr(importlib.import_module(module), name)
    return _compiled_class(cls) if impl.compile_step else cls


def _param_groups(spec: OptimizerSpec, model_or_params, hp: dict) -> list[dict]:
    if isinstance(model_or_params, nn.Module):
        make = spec.param_groups or (lambda model, wd: build_param_groups(model, wd))
        return make(model_or_params, hp["weight_decay"])
    groups = list(model_or_params)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    return groups


def _guard_loading(optimizer: torch.optim.Optimizer, spec: OptimizerSpec):
    """Before loading: hyperparameters that shape the state (AMSGrad's v_max, SGD's momentum
    buffer, a block size) must match, checked before any state is taken. After loading: the
    spec's own flags are re-asserted, and lr takes the type this class needs: a float (an old
    checkpoint of the compiled implementation holds a tensor lr, which foreach kernels refuse), or
    a tensor for classes that require one (torchao)."""
    built = [{k: g[k] for k in _FLAG_KEYS if k in g} for g in optimizer.param_groups]
    structural = [{k: g[k] for k in spec.structural if k in g} for g in optimizer.param_groups]

    def check_before(opt, state_dict):
        refuse_other_algorithm(spec, state_dict)
        for ours, saved in zip(structural, state_dict.get("param_groups", [])):
            for key, value in ours.items():
                if key in saved and saved[key] != value:
                    raise ConfigError(f"checkpoint was saved with {key}={saved[key]}, "
                                      f"this optimizer has {key}={value}")
        return None

    def reassert_after(opt):
        for group, flags in zip(opt.param_groups, built):
            group.update(flags)
            if torch.is_tensor(group["lr"]) and not spec.tensor_lr:
                group["lr"] = float(group["lr"])
            elif spec.tensor_lr and not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(group["lr"])

    if type(optimizer).load_state_dict is torch.optim.Optimizer.load_state_dict:
        optimizer.register_load_state_dict_pre_hook(check_before)
        optimizer.register_load_state_dict_post_hook(reassert_after)
    else:  # bitsandbytes' own load_state_dict runs no hooks: the same checks around it
        load = optimizer.load_state_dict

        def load_state_dict(state_dict, *args, **kwargs):
            check_before(optimizer, state_dict)
            load(state_dict, *args, **kwargs)
            reassert_after(optimizer)
        optimizer.load_state_dict = load_state_dict


def refuse_other_algorithm(spec: OptimizerSpec, state_dict: dict):
    """Another algorithm's state (Lion's m in AdamW, Adam's coupled-L2 moments in AdamW, SGD's
    momentum in Muon) would either crash a later step or continue silently on mixed state: refused
    here, before torch replaces any group or state. State dicts without the record (a plain torch
    optimizer's) are checked by the structural keys only."""
    saved = {g.get(NAME_KEY) for g in state_dict.get("param_groups", [])} - {None}
    for name in sorted(saved):
        other = REGISTRY.get(name)
        if other is None or _algorithm(other) != _algorithm(spec):
            raise ConfigError(f"optimizer state saved by {name!r} cannot be loaded into {spec.name!r}: "
                              f"another algorithm's state; load it into a {name!r} optimizer")


def _algorithm(spec: OptimizerSpec) -> tuple:
    """What a state means: the class and the kwargs that make it this algorithm. Entries that
    differ only in kernel (adamw, adamw_fused) share it, so their states interchange."""
    return spec.class_path, tuple(sorted(spec.fixed_kwargs.items()))


def describe_optimizer(optimizer) -> dict:
    """What actually runs (read from the groups, so a loaded checkpoint's values show): name,
    implementation, class, and every hyperparameter of the spec. lr is the base lr before the
    schedule (`initial_lr`), weight_decay the decayed groups' value."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper
    spec = get_optimizer_spec(optimizer.finetune_opt["name"])
    groups = optimizer.param_groups
    out = {**optimizer.finetune_opt, "class": type(optimizer).__name__}
    for key in spec.all_hyperparams:
        if key == "lr":
            value = groups[0].get("initial_lr", groups[0]["lr"])
        elif key == "weight_decay":
            value = max(g["weight_decay"] for g in groups)
        else:
            value = next((g[key] for g in groups if key in g), None)
        if key == "eps" and isinstance(value, tuple):  # Adafactor keeps (eps1, eps2)
            value = value[1]
        if torch.is_tensor(value):  # float32 lr tensors: report 5e-05, not 4.999999873689376e-05
            value = float(f"{value.item():.7g}") if value.dtype == torch.float32 else value.item()
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


class _CompiledStepMixin:
    """Runs the class's own step under torch.compile. The lr is a tensor *inside* the compiled
    call only (one per group, refilled each step), so LR schedules don't trigger recompiles while
    schedulers and checkpoints keep seeing plain floats."""

    def step(self, closure=None):
        if closure is not None:
            raise ConfigError("the compiled implementation does not take a closure")
        first = not hasattr(self, "_compiled_step")
        if first:
            base_step = super().step  # bound to the torch class's step
            self._lr_tensors = [torch.tensor(0.0) for _ in self.param_groups]
            self._compiled_step = torch.compile(lambda: base_step(), fullgraph=False)
        floats = [g["lr"] for g in self.param_groups]
        for group, tensor, lr in zip(self.param_groups, self._lr_tensors, floats):
            tensor.fill_(lr)
            group["lr"] = tensor
        try:
            graphs = _dynamo_counters["stats"]["unique_graphs"]
            loss = self._compiled_step()
            if first and _dynamo_counters["stats"]["unique_graphs"] == graphs:
                # Each instance compiles its own graph (dynamo guards on `self`). None new: dynamo
                # hit its recompile limit and ran the step eagerly, with only a one-time log line,
                # which would turn a "compiled" timing into an eager one without a word.
                raise RuntimeError(
                    f"the compiled {type(self).__name__} step ran eagerly: torch._dynamo's recompile limit "
                    f"({torch._dynamo.config.recompile_limit} graphs per step function and process; adam_l2 "
                    f"and adamw share Adam.step) is used up; run each compiled optimizer in its own process")
            return loss
        finally:
            for group, lr in zip(self.param_groups, floats):
                group["lr"] = lr


_COMPILED_CLASSES = {}


def _compiled_class(torch_class: type) -> type:
    if torch_class not in _COMPILED_CLASSES:
        _COMPILED_CLASSES[torch_class] = type(
            f"Compiled{torch_class.__name__}", (_CompiledStepMixin, torch_class), {})
    return _COMPILED_CLASSES[torch_class]
