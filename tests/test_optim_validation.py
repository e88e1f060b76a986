"""Every validation error is a ConfigError with a one-line message naming what is valid."""

import importlib.util
import types

import pytest
import torch

from finetune_opt.errors import ConfigError
from finetune_opt.optim import REGISTRY, create_optimizer, get_optimizer_spec, list_optimizers, runs_on

NAMES = runs_on("cpu")  # entries that run only elsewhere: refused here (test_optim_parity)


def model():
    return torch.nn.Linear(4, 2)


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=0), "adamw: lr must be a finite number > 0, got 0"),
    (dict(lr=-1e-3), "adamw: lr must be a finite number > 0, got -0.001"),
    (dict(lr=float("nan")), "adamw: lr must be a finite number > 0, got nan"),
    (dict(lr=True), "adamw: lr must be a finite number > 0, got True"),  # bool is not a number
    (dict(betas=(0.9, 1.0)), "adamw: betas must be two numbers in [0, 1), got (0.9, 1.0)"),
    (dict(betas=(-0.1, 0.9)), "adamw: betas must be two numbers in [0, 1), got (-0.1, 0.9)"),
    (dict(betas=(0.9,)), "adamw: betas must be two numbers in [0, 1), got (0.9,)"),
    (dict(eps=0.0), "adamw: eps must be a finite number > 0, got 0.0"),
    (dict(weight_decay=-0.01), "adamw: weight_decay must be a finite number >= 0, got -0.01"),
    (dict(amsgrad="yes"), "adamw: amsgrad must be true or false, got 'yes'"),
    (dict(momentum=0.9), "optimizer 'adamw' has no hyperparameter 'momentum'; "
                         "its hyperparameters: lr, weight_decay, betas, eps, amsgrad"),
])
def test_invalid_adamw_hyperparameters(kwargs, message):
    assert one_line_error(create_optimizer, "adamw", model(), **kwargs) == message


@pytest.mark.parametrize("name", NAMES)
def test_each_optimizer_refuses_keys_it_does_not_have(name):
    """A key another optimizer has (betas for SGD, momentum for Adam) is named with this
    optimizer's own keys."""
    spec = REGISTRY[name]
    foreign = next(k for s in REGISTRY.values() for k in s.hyperparams if k not in spec.all_hyperparams)
    msg = one_line_error(create_optimizer, name, model(), **{foreign: 0.5})
    assert msg == (f"optimizer {name!r} has no hyperparameter {foreign!r}; "
                   f"its hyperparameters: {', '.join(spec.all_hyperparams)}")


@pytest.mark.parametrize("name", NAMES)
def test_each_hyperparameter_refuses_a_wrong_type(name):
    """A string where the schema wants a number, a bool or a pair: one line with the rule."""
    for key, hp in REGISTRY[name].all_hyperparams.items():
        msg = one_line_error(create_optimizer, name, model(), **{key: "abc"})
        assert msg == f"{name}: {key} must be {hp.rule}, got 'abc'"


@pytest.mark.parametrize("name", NAMES)
def test_defaults_pass_their_own_validation(name):
    spec = REGISTRY[name]
    values = spec.validate({})
    assert set(values) == set(spec.all_hyperparams) and values["lr"] == spec.default_lr


def test_unknown_optimizer_lists_valid_names():
    assert one_line_error(get_optimizer_spec, "adamx") == \
        f"unknown optimizer 'adamx'; choose one of: {', '.join(REGISTRY)}"


def test_unknown_and_unsupported_implementation():
    assert one_line_error(create_optimizer, "adamw", model(), implementation="cuda-graph") == \
        "unknown implementation 'cuda-graph'; choose one of: for-loop, foreach, fused, compiled"
    assert one_line_error(create_optimizer, "adamw_fused", model(), implementation="foreach") == \
        "optimizer 'adamw_fused' has no 'foreach' implementation; choose one of: fused"


def test_fused_rejects_unsupported_device_and_dtype():
    # A device with no fused kernel cannot be made on a CPU build: the check reads only .device and .dtype.
    on_tpu = types.SimpleNamespace(device=torch.device("xla"), dtype=torch.float32)
    msg = one_line_error(get_optimizer_spec("adamw_fused").check_parameters, "fused", [on_tpu])
    assert msg.startswith("adamw_fused (fused) needs parameters of dtype float64, float32, float16, bfloat16 "
                          "on device ") and msg.endswith("; got float32 on xla")
    # The meta device is FSDP2's placeholder before Accelerate shards rank 0's weights: accepted.
    get_optimizer_spec("adamw_fused").check_parameters("fused", list(torch.nn.Linear(4, 2, device="meta").parameters()))
    assert one_line_error(create_optimizer, "adamw_fused", [torch.zeros(3, dtype=torch.long)]).endswith(
        "got int64 on cpu")


@pytest.mark.parametrize("name", [n for n in NAMES if torch.float64 not in REGISTRY[n].param_dtypes])
def test_float32_only_optimizers_refuse_float64(name):
    assert one_line_error(create_optimizer, name, model().double()).endswith("got float64 on cpu")


def test_no_trainable_parameters():
    assert one_line_error(create_optimizer, "adamw", model().requires_grad_(False)) == \
        "the model has no trainable parameters to optimize"


@pytest.mark.parametrize("name", [n for n, s in REGISTRY.items() if s.extra])
def test_missing_extra_is_one_line_naming_it(name, monkeypatch):
    spec = REGISTRY[name]
    package = spec.optimizer_class.partition(":")[0].split(".")[0]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod == package else real(mod, *a))
    assert one_line_error(create_optimizer, name, model()) == \
        f"optimizer {name!r} needs the {package!r} package: pip install 'finetune_opt[{spec.extra}]'"


def test_list_optimizers_shows_every_entry_with_hyperparameters_and_devices():
    rows = {r["name"]: r for r in list_optimizers()}
    assert list(rows) == list(REGISTRY) and len(rows) >= 9
    for name, row in rows.items():
        spec = REGISTRY[name]
        assert row["hyperparameters"]["lr"] == spec.default_lr
        assert set(row["hyperparameters"]) == set(spec.all_hyperparams)
        assert set(row["implementations"]) == set(spec.implementations) and all(row["implementations"].values())
    assert "cpu" in rows["adamw_fused"]["implementations"]["fused"]
    adafactor = rows["adafactor"]["hyperparameters"]
    assert adafactor.keys() >= {"beta2_decay", "d"} and "betas" not in adafactor
    assert "eps" not in rows["lion"]["hyperparameters"] and rows["lion"]["hyperparameters"]["betas"] == [0.9, 0.99]


PROBES = (-1.0, 0.0, 1e-9, 0.5, 0.999, 1.0, 2.0, 10.0, 0, 1, 2, 99, True, False, (0.0, 0.0), (0.5, 0.999))


@pytest.mark.parametrize("name", NAMES)
def test_every_value_the_schema_accepts_the_optimizer_accepts(name):
    """Validation is the last word: a value that passes it must build (Adafactor's d in (0, 1)
    passed and then torch raised an uncaught ValueError: torch requires d >= 1)."""
    for key, hp in REGISTRY[name].all_hyperparams.items():
        for value in (*PROBES, *hp.options):
            if hp.check(value):
                create_optimizer(name, model(), **{key: value})


@pytest.mark.parametrize("step", [1, 10**4, 10**6, 4 * 10**6])
def test_adafactor_step_is_what_its_description_says(step):
    """rho_t = min(lr, 1/sqrt(t)) times the parameter's RMS: at the default lr 1e-3, a constant
    1e-3 (a tenth of the paper's 1e-2) until t = 10^6, then 1/sqrt(t). Measured on a vector whose
    second moment already equals g^2, so the normalised update is sign(g)."""
    spec = REGISTRY["adafactor"]
    assert "rho_t = min(lr, 1/sqrt(t))" in spec.description and "rho_t = min(lr, 1/sqrt(t))" in spec.paper
    p = torch.nn.Parameter(torch.linspace(-1, 1, 64, dtype=torch.float64))
    opt = create_optimizer("adafactor", [p])
    p.grad = torch.full_like(p, 0.3)
    opt.step()  # creates the state
    opt.state[p]["step"].fill_(step - 1)
    opt.state[p]["variance"].copy_(p.grad ** 2)
    before = p.detach().clone()
    opt.step()
    relative_step = ((before - p.detach()).pow(2).mean().sqrt() / before.pow(2).mean().sqrt()).item()
    assert relative_step == pytest.approx(min(spec.default_lr, step ** -0.5), rel=1e-9)
