"""What the registry knows about an optimizer: an `OptimizerSpec` describes, it does not build.

A spec says which class implements the algorithm (imported lazily, so optional dependencies are
only needed when that optimizer is chosen), which hyperparameters it takes with their defaults
and rules, which implementations and devices it supports, how its parameter groups are made,
whether the engine must switch it between train and eval mode, and what it costs: optimizer-state
bytes and memory traffic per step (for memory prediction and the bandwidth roofline).
`build.create_optimizer` turns a spec plus user values into a torch optimizer.
"""

import importlib
import importlib.util
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from finetune_opt.errors import ConfigError, one_of
from finetune_opt.optim.cpu_kernels import check_tools

# --- hyperparameter schema ---------------------------------------------------------------------

@dataclass(frozen=True)
class Hyperparam:
    """One hyperparameter: its default, a check, and the rule the error message states."""

    default: object
    check: Callable[[object], bool]
    rule: str
    convert: Callable[[object], object] = lambda v: v  # YAML list -> tuple, int -> float, ...
    options: tuple = ()  # the values of a choice (tests try each)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def number(low=None, high=None, *, low_open=False, high_open=False, default=0.0) -> Hyperparam:
    """A finite number in an interval ("bool is a number" in Python: refused here)."""
    def check(v):
        return (_is_number(v) and (low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    rule = (f"a finite number in {left}{low}, {high}{right}" if low is not None and high is not None
            else f"a finite number {'>' if low_open else '>='} {low}" if low is not None else "a finite number")
    return Hyperparam(default, check, rule, float)


def integer(low: int, high: int, default: int) -> Hyperparam:
    return Hyperparam(default, lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
                      f"an integer in [{low}, {high}]", int)


def boolean(default: bool) -> Hyperparam:
    return Hyperparam(default, lambda v: isinstance(v, bool), "true or false")


def choice(default, *options) -> Hyperparam:
    return Hyperparam(default, lambda v: v in options, "one of: " + ", ".join(map(str, options)), options=options)


def betas(default: tuple) -> Hyperparam:
    """Two momentum coefficients in [0, 1)."""
    def check(v):
        return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)
    return Hyperparam(default, check, "two numbers in [0, 1)", lambda v: tuple(float(b) for b in v))


LR = number(0, low_open=True)
WEIGHT_DECAY = number(0, default=0.0)


# --- implementations and devices ---------------------------------------------------------------

@dataclass(frozen=True)
class Implementation:
    """How one implementation is selected: constructor flags, and whether we compile the step."""

    flags: dict = field(default_factory=dict)
    compile_step: bool = False  # the step runs under torch.compile: the class's own step (tensor lr
                                # inside), or, with `subclass`, that subclass's compiled update
    subclass: str | None = None  # "module:Class", a subclass of the spec's class with its own step
                                 # (optim/compiled.py); loaded after the spec's class, so a missing
                                 # optional package is still reported by its extra
    devices: tuple = ("any",)
    # What one step allocates beyond the state, as (scope, multiple): a multi-tensor (foreach) step
    # holds intermediates for a whole parameter group at once ("group"), a per-tensor step for one
    # tensor at a time ("tensor", so its largest), a fused kernel none. finetune_opt.measure.memory predicts
    # the step's temporaries from it; measured values sit beside it in every results.json.
    temporaries: tuple = ("tensor", 1.0)
    # The step takes GradScaler's `found_inf` tensor (an attribute of the optimizer its step reads)
    # and changes no parameter or state where it is set: the engine skips a non-finite step on the
    # device instead of reading the flag back first (train/skips.py).
    takes_found_inf: bool = False
    # torch has a DTensor rule for the step's kernels, so it can step FSDP2's shards (tested for
    # every entry's sharded default by tests/fsdp_parity_worker.py); torch 2.13 has none for
    # _fused_sgd_, for one
    steps_shards: bool = True
    # optim/kernels/<kernel>.cpp, C++ that optim/cpu_kernels.py builds on first use (a compiler and
    # ninja): checked for at config validation, built when the optimizer is
    kernel: str | None = None


def fused_devices() -> tuple:
    return tuple(d for d in _get_fused_kernels_supported_devices() if d != "privateuseone")


INDUCTOR_DEVICES = ("cpu", "cuda", "xpu")  # devices with an Inductor backend

# torch.optim's flag names; classes that accept both foreach and fused (Adam, AdamW, SGD).
TORCH_MULTI_TENSOR = {
    # for-loop Adam: sqrt(v) and sqrt(v)/bc of one tensor, while the previous tensor's denominator
    # is still bound to its loop variable: at most 3 tensors' worth (exact for equal tensors)
    "for-loop": Implementation({"foreach": False, "fused": False}, temporaries=("tensor", 3.0)),
    "foreach": Implementation({"foreach": True, "fused": False}, temporaries=("group", 1.0)),
    "fused": Implementation({"foreach": False, "fused": True}, devices=fused_devices(), temporaries=(None, 0.0),
                            takes_found_inf=True),
    "compiled": Implementation({"foreach": False, "fused": False}, compile_step=True, devices=INDUCTOR_DEVICES,
                               temporaries=(None, 0.0)),  # Inductor fuses the update into one kernel
}
FOREACH_OR_LOOP = {  # classes with a foreach flag but no fused one (Adafactor, schedule-free, ours)
    "for-loop": Implementation({"foreach": False}, temporaries=("tensor", 1.0)),
    "foreach": Implementation({"foreach": True}, temporaries=("group", 1.0)),
}


def compiled_update(subclass: str, takes_found_inf: bool = False) -> Implementation:
    """The "compiled" implementation of an entry whose step is one of optim/compiled.py's updates:
    one Inductor kernel per tensor (and reduction), so no step-sized temporaries."""
    return Implementation({"foreach": False}, compile_step=True, subclass=subclass, devices=INDUCTOR_DEVICES,
                          temporaries=(None, 0.0), takes_found_inf=takes_found_inf)


IMPLEMENTATION_NAMES = ("for-loop", "foreach", "fused", "compiled")


# --- cost model: bytes of state and of memory traffic per parameter tensor ----------------------

def elementwise(tensors: float) -> Callable:
    """A cost of `tensors` parameter-sized tensors in the parameter's dtype: for state bytes
    (Adam: 2, m and v) or for the bytes one step streams (Adam: 7, read p g m v, write p m v)."""
    def cost(shape, dtype, group):
        return int(tensors * math.prod(shape) * dtype.itemsize)
    return cost


# --- the spec -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    description: str
    optimizer_class: str | type          # a class, or "module:Class" imported when first built
    hyperparams: dict                    # name -> Hyperparam, beyond lr and weight_decay
    default_lr: float                    # a fine-tuning starting point (the study tunes around it)
    implementations: dict                # name -> Implementation
    default_implementation: str          # where the device is not known yet (config validation)
    state_bytes: Callable                # (shape, dtype, group) -> optimizer-state bytes of one parameter
    traffic_bytes: Callable              # (shape, dtype, group) -> bytes one step reads + writes for it
    paper: str                           # where the update rule comes from (tests' reference)
    default_weight_decay: float = 0.01
    fixed_kwargs: dict = field(default_factory=dict)  # what makes the class *this* algorithm
    structural: tuple = ()               # hyperparameters that shape the state: must match on load
    param_groups: Callable | None = None  # (model, hp) -> groups; None: decay / no-decay split
    build: Callable | None = None        # (cls, groups, kwargs) -> optimizer; None: cls(groups, **kwargs)
    train_eval_modes: bool = False       # engine calls optimizer.train()/eval() (schedule-free)
    owns_lr_schedule: bool = False       # the LR scheduler must be constant (warm-up is its own)
    step_flops: Callable | None = None   # (shape) -> FLOPs of one step, for compute-bound optimizers
    extra: str | None = None             # pip extra that brings optimizer_class's package
    param_dtypes: tuple = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    tensor_lr: bool = False              # the class keeps lr as a tensor in its groups (torchao)
    needs_whole_tensors: bool = False    # the update looks across a matrix (factored moments,
                                         # orthogonalisation): FSDP2 steps it on gathered tensors
                                         # (optim/whole_tensors.py); DeepSpeed refuses it
    fsdp2_refusal: str | None = None     # why this entry cannot step FSDP2 shards (None: it can)
    rules: tuple = ()                    # (hp) -> a message or None: rules across hyperparameters that
                                         # the class would otherwise raise on when built, mid-run
    quantised_from: int | None = None    # low-bit states: tensors with at least this many elements hold
                                         # quantised moments, smaller ones full-precision (the tests'
                                         # parity bounds differ between the two)
    device_defaults: dict = field(default_factory=dict)  # device type -> the fastest exact implementation
                                         # there, by a committed measurement (registry.py cites it)
    elsewhere: str = ""                  # why it does not run on other devices and what to choose
                                         # there: ends the one-line device refusal

    @property
    def all_hyperparams(self) -> dict:
        return {"lr": replace(LR, default=self.default_lr),
                "weight_decay": replace(WEIGHT_DECAY, default=self.default_weight_decay),
                **self.hyperparams}

    def validate(self, values: dict) -> dict:
        """User values (a subset) -> every hyperparameter, defaults filled; one-line errors."""
        schema = self.all_hyperparams
        unknown = [k for k in values if k not in schema]
        if unknown:
            raise ConfigError(f"optimizer {self.name!r} has no hyperparameter {unknown[0]!r}; "
                              f"its hyperparameters: {', '.join(schema)}")
        out = {}
        for key, hp in schema.items():
            value = values.get(key, hp.default)
            if not hp.check(value):
                raise ConfigError(f"{self.name}: {key} must be {hp.rule}, got {value!r}")
            out[key] = hp.convert(value)
        broken = next((m for m in (rule(out) for rule in self.rules) if m), None)
        if broken:
            raise ConfigError(f"{self.name}: {broken}")
        return out

    def default_for(self, device_type: str | None, sharded: bool = False, in_backward: bool = False) -> str:
        """The fastest implementation measured on `device_type`, if it can run the run: on FSDP2
        shards one that steps them, with the step in backward one not compiled (a graph per
        parameter); else the device-independent default."""
        fastest = self.device_defaults.get(device_type, self.default_implementation)
        how = self.implementations[fastest]
        fits = (not sharded or how.steps_shards) and not (in_backward and how.compile_step)
        return fastest if fits else self.default_implementation

    def resolve_implementation(self, implementation: str | None, device_type: str | None = None,
                               sharded: bool = False) -> str:
        """The implementation asked for, or this entry's default on `device_type` (if known)."""
        implementation = implementation or self.default_for(device_type, sharded)
        if implementation not in IMPLEMENTATION_NAMES:
            raise one_of("implementation", implementation, IMPLEMENTATION_NAMES)
        if implementation not in self.implementations:
            raise ConfigError(f"optimizer {self.name!r} has no {implementation!r} implementation; "
                              f"choose one of: {', '.join(self.implementations)}")
        return implementation

    def check_installed(self, implementation: str | None = None):
        """Fail in one line, naming the pip extra, when the optimizer's package is missing, or
        naming the other implementations when `implementation`'s kernel has no compiler to build it."""
        if isinstance(self.optimizer_class, str):
            module = self.optimizer_class.partition(":")[0]
            if importlib.util.find_spec(module.split(".")[0]) is None:
                raise ConfigError(f"optimizer {self.name!r} needs the {module.split('.')[0]!r} package: "
                                  f"pip install 'finetune_opt[{self.extra}]'")
        if implementation and self.implementations[implementation].kernel:
            check_tools(f"{self.name} ({implementation})", self.instead_of(implementation))

    def instead_of(self, implementation: str) -> str:
        """The end of a refusal of `implementation`: the others that build no C++ kernel."""
        others = [name for name, how in self.implementations.items() if name != implementation and not how.kernel]
        return f"choose {self.name}'s implementation {', '.join(others[:-1])} or {others[-1]}"

    def load_class(self) -> type:
        if not isinstance(self.optimizer_class, str):
            return self.optimizer_class
        self.check_installed()
        module, _, name = self.optimizer_class.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def class_path(self) -> str:
        c = self.optimizer_class
        return c if isinstance(c, str) else f"{c.__module__}:{c.__qualname__}"

    def state_bytes_for(self, param_groups) -> int:
        """Predicted optimizer-state bytes for these groups (what `measure` reads back); of the whole
        tensors where the parameters are FSDP2 DTensors (each rank holds 1/N of it)."""
        return sum(self.state_bytes(tuple(p.shape), p.dtype, g) for g in param_groups for p in g["params"])

    def traffic_bytes_for(self, param_groups) -> int:
        """Bytes one step reads and writes: the numerator of the bandwidth roofline."""
        return sum(self.traffic_bytes(tuple(p.shape), p.dtype, g) for g in param_groups for p in g["params"])

    def step_flops_for(self, param_groups) -> int | None:
        if self.step_flops is None:
            return None
        return sum(self.step_flops(tuple(p.shape), g) for g in param_groups for p in g["params"])

    def supports(self, implementation: str, device_type: str) -> bool:
        devices = self.implementations[implementation].devices
        return "any" in devices or device_type in devices

    def check_parameters(self, implementation: str, params: list[torch.Tensor]):
        """Device and dtype checks before construction: one line instead of a kernel error. A
        parameter on the meta device is a placeholder (FSDP2's CPU-RAM-efficient loading leaves all
        but rank 0's there until Accelerate shards rank 0's weights onto every rank): its dtype is checked."""
        for p in params:
            device_ok = p.device.type == "meta" or self.supports(implementation, p.device.type)
            if not device_ok or p.dtype not in self.param_dtypes:
                devices = self.implementations[implementation].devices
                dtypes = ", ".join(str(d).removeprefix("torch.") for d in self.param_dtypes)
                raise ConfigError(
                    f"{self.name} ({implementation}) needs parameters of dtype {dtypes} on device "
                    f"{', '.join(devices)}; got {str(p.dtype).removeprefix('torch.')} on {p.device.type}"
                    + (f": {self.elsewhere}" if self.elsewhere and not device_ok else ""))
