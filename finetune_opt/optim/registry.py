"""The optimizer registry: one place to add an optimizer, one function to build it.

A factory is a torch optimizer class plus the flags that make it *this* algorithm (coupled L2
or decoupled decay) and the implementations it may run with. To add one, append an
`OptimizerFactory` to `_FACTORIES`; `list_optimizers()`, the CLI, the recipes and the tests pick
it up from there.
"""

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from finetune_opt.errors import ConfigError, one_of
from finetune_opt.optim.param_groups import build_param_groups

# How each implementation maps onto torch's flags. "compiled" runs the single-tensor step under
# torch.compile, which lets Inductor fuse it; lr becomes a tensor so that LR schedules do not
# trigger a recompile each step (torch's recommended pattern for compiled optimizers).
IMPLEMENTATION_FLAGS = {
    "for-loop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True, "fused": False},
    "fused": {"foreach": False, "fused": True},
    "compiled": {"foreach": False, "fused": False},
}
IMPLEMENTATIONS = tuple(IMPLEMENTATION_FLAGS)


@dataclass(frozen=True)
class OptimizerFactory:
    name: str
    description: str
    torch_class: type
    decoupled_weight_decay: bool
    implementations: tuple = IMPLEMENTATIONS
    default_implementation: str = "foreach"


_FACTORIES = (
    OptimizerFactory(
        "adam_l2",
        "Adam with coupled L2: weight_decay*p is added to the gradient (Kingma & Ba 2015)",
        torch.optim.Adam,
        decoupled_weight_decay=False,
    ),
    OptimizerFactory(
        "adamw",
        "AdamW: decoupled weight decay p -= lr*wd*p (Loshchilov & Hutter 2019)",
        torch.optim.AdamW,
        decoupled_weight_decay=True,
    ),
    OptimizerFactory(
        "adamw_fused",
        "AdamW with torch's fused one-kernel step (fused=True)",
        torch.optim.AdamW,
        decoupled_weight_decay=True,
        implementations=("fused",),
        default_implementation="fused",
    ),
)
REGISTRY = {f.name: f for f in _FACTORIES}


@dataclass(frozen=True)
class AdamHyperparams:
    """Validated hyperparameters shared by the Adam family (defaults: common fine-tuning)."""

    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    amsgrad: bool = False

    def __post_init__(self):
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else None
        if betas is None or len(betas) != 2 or not all(
                isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"eps must be a finite number > 0, got {self.eps!r}")
        if not isinstance(self.amsgrad, bool):
            raise ConfigError(f"amsgrad must be true or false, got {self.amsgrad!r}")


HYPERPARAMETERS = tuple(AdamHyperparams.__dataclass_fields__)


def get_factory(name: str) -> OptimizerFactory:
    if name not in REGISTRY:
        raise one_of("optimizer", name, REGISTRY)
    return REGISTRY[name]


def resolve_implementation(factory: OptimizerFactory, implementation: str | None) -> str:
    implementation = implementation or factory.default_implementation
    if implementation not in IMPLEMENTATION_FLAGS:
        raise one_of("implementation", implementation, IMPLEMENTATIONS)
    if implementation not in factory.implementations:
        raise ConfigError(f"optimizer {factory.name!r} has no {implementation!r} implementation; "
                          f"choose one of: {', '.join(factory.implementations)}")
    return implementation


def implementation_devices(implementation: str) -> list[str]:
    """Device types an implementation runs on (what `list-optimizers` shows)."""
    if implementation == "fused":
        return [d for d in _get_fused_kernels_supported_devices() if d != "privateuseone"]
    if implementation == "compiled":
        return ["cpu", "cuda", "xpu"]  # devices with an Inductor backend
    return ["any"]


def list_optimizers() -> list[dict]:
    """One row per factory: name, description, implementations and their devices."""
    return [
        {
            "name": f.name,
            "description": f.description,
            "torch_class": f"{f.torch_class.__module__}.{f.torch_class.__name__}",
            "default_implementation": f.default_implementation,
            "implementations": {i: implementation_devices(i) for i in f.implementations},
        }
        for f in _FACTORIES
    ]


def _check_fused_support(params: list[torch.Tensor]):
    supported = implementation_devices("fused")
    for p in params:
        if p.device.type not in supported or not torch.is_floating_point(p):
            raise ConfigError(
                f"fused implementation needs floating-point parameters on one of: "
                f"{', '.join(supported)}; got {p.dtype} on {p.device.type} "
                f"(choose implementation foreach or for-loop there)")


class _CompiledStepMixin:
    """Runs the optimizer's own step under torch.compile (no closure: it would break the graph)."""

    def step(self, closure=None):
        if closure is not None:
            raise ConfigError("the compiled implementation does not take a closure")
        if not hasattr(self, "_compiled_step"):
            base_step = super().step  # bound to the torch class's step
            self._compiled_step = torch.compile(lambda: base_step(), fullgraph=False)
        return self._compiled_step()


_COMPILED_CLASSES = {}


def _compiled_class(torch_class: type) -> type:
    if torch_class not in _COMPILED_CLASSES:
        _COMPILED_CLASSES[torch_class] = type(
            f"Compiled{torch_class.__name__}", (_CompiledStepMixin, torch_class), {})
    return _COMPILED_CLASSES[torch_class]


def _optimizer_class(factory: OptimizerFactory, implementation: str) -> type:
    if implementation == "compiled":
        return _compiled_class(factory.torch_class)
    return factory.torch_class


def _reassert_flags_hook(flags: dict, implementation: str, amsgrad: bool):
    """After load_state_dict torch copies fused/foreach/decoupled_weight_decay from the checkpoint
    into every group; put back the factory's own, so a checkpoint cannot silently change the
    algorithm or the kernel. AMSGrad changes the state's shape, so a mismatch is an error."""

    def hook(optimizer):
        for group in optimizer.param_groups:
            if group.get("amsgrad", False) != amsgrad:
                raise ConfigError(f"checkpoint was saved with amsgrad={group.get('amsgrad')}, "
                                  f"this optimizer has amsgrad={amsgrad}")
            group.update(flags)
            if implementation == "compiled" and not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(float(group["lr"]))

    return hook


def create_optimizer(name: str, model_or_params, *, implementation: str | None = None,
                     **hyperparams) -> torch.optim.Optimizer:
    """Build registered optimizer `name` for a model (decay/no-decay groups) or for explicit
    parameters / param groups. Hyperparameters: lr, weight_decay, betas, eps, amsgrad."""
    factory = get_factory(name)
    implementation = resolve_implementation(factory, implementation)
    unknown = sorted(set(hyperparams) - set(HYPERPARAMETERS))
    if unknown:
        raise ConfigError(f"unknown optimizer hyperparameter {unknown[0]!r}; "
                          f"choose from: {', '.join(HYPERPARAMETERS)}")
    hp = AdamHyperparams(**hyperparams)

    if isinstance(model_or_params, nn.Module):
        groups = build_param_groups(model_or_params, hp.weight_decay)
    else:
        groups = list(model_or_params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ConfigError("the model has no trainable parameters to optimize")
    if implementation == "fused":
        _check_fused_support(params)

    flags = dict(IMPLEMENTATION_FLAGS[implementation])
    if factory.torch_class is torch.optim.Adam:  # AdamW fixes it itself and takes no such argument
        flags["decoupled_weight_decay"] = factory.decoupled_weight_decay
    lr = torch.tensor(hp.lr) if implementation == "compiled" else hp.lr
    optimizer = _optimizer_class(factory, implementation)(
        groups, lr=lr, betas=hp.betas, eps=hp.eps, weight_decay=hp.weight_decay,
        amsgrad=hp.amsgrad, **flags)
    if "decoupled_weight_decay" in optimizer.param_groups[0]:  # torch >= 2.6 keeps it per group
        flags["decoupled_weight_decay"] = factory.decoupled_weight_decay
    optimizer.register_load_state_dict_post_hook(_reassert_flags_hook(flags, implementation, hp.amsgrad))
    # What was built, for results files and reports.
    optimizer.finetune_opt_spec = {"name": name, "implementation": implementation, **asdict(hp)}
    return optimizer
