"""Reading a run's configuration: a YAML file (or a packaged config's name) and `key=value`
overrides, the optimizer written as a block, flat keys or dotted overrides -> a RunConfig."""

import re
import sys

import yaml

from finetune_opt.config import builtin as packaged_configs
from finetune_opt.config.run_config import FIELDS, RunConfig
from finetune_opt.errors import ConfigError, one_of
from finetune_opt.optim import REGISTRY, get_optimizer_spec


# Flat optimizer keys of the first config format; they still work and land in optimizer_args.
LEGACY_OPTIMIZER_KEYS = ("betas", "eps", "amsgrad")
# Keys of an `optimizer:` block that are RunConfig fields; every other key is a hyperparameter.
OPTIMIZER_BLOCK_FIELDS = {"name": "optimizer", "implementation": "implementation", "lr": "lr",
                          "weight_decay": "weight_decay"}


def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    key = key.lstrip("-").replace("-", "_")
    if not sep:
        raise ConfigError(f"override {text!r} is not key=value")
    if key not in FIELDS and key not in LEGACY_OPTIMIZER_KEYS and not key.startswith("optimizer."):
        raise one_of("config key", key, FIELDS)
    try:
        return key, yaml.safe_load(value)  # "1e-4" -> 1e-4, "null" -> None, "[0.9, 0.95]" -> list
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {getattr(e, 'problem', e)}") from None


def _set_optimizer_value(values: dict, key: str, value):
    """`optimizer.lr=3e-4` / a block key / a legacy flat key -> the RunConfig field it means."""
    if key in OPTIMIZER_BLOCK_FIELDS:
        values[OPTIMIZER_BLOCK_FIELDS[key]] = value
    else:
        values.setdefault("optimizer_args", {})
        if not isinstance(values["optimizer_args"], dict):
            raise ConfigError(f"optimizer_args must be a mapping, got {values['optimizer_args']!r}")
        values["optimizer_args"] = {**values["optimizer_args"], key: value}


def _normalise_optimizer(values: dict) -> dict:
    """One shape for the three ways of writing the optimizer: a block, flat keys, overrides."""
    block = values.get("optimizer")
    if isinstance(block, dict):
        if "name" not in block:
            raise ConfigError(f"the optimizer block needs a 'name', got keys: {', '.join(block) or 'none'}")
        values["optimizer"] = None
        for key, value in block.items():
            _set_optimizer_value(values, key, value)
    for key in LEGACY_OPTIMIZER_KEYS:
        if key in values:
            _set_optimizer_value(values, key, values.pop(key))
    for key in [k for k in values if k.startswith("optimizer.")]:
        _set_optimizer_value(values, key.partition(".")[2], values.pop(key))
    return values


def read_yaml_mapping(path: str, what: str = "config file", of: str = "RunConfig fields") -> dict:
    """A UTF-8 YAML file holding a mapping (empty: {}); anything else is one line naming `what`."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path!r} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{what} {path!r} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{what} {path!r} must be a mapping of {of}, got a {type(values).__name__}")
    return values


def _spellings(pairs):
    """(as written, the field or optimizer argument it sets, value) for one layer's key=value pairs."""
    for key, value in pairs:
        if key == "optimizer" and isinstance(value, dict):
            yield from ((f"optimizer.{k}", OPTIMIZER_BLOCK_FIELDS.get(k, f"optimizer.{k}"), v) for k, v in value.items())
        elif key.startswith("optimizer.") or key in LEGACY_OPTIMIZER_KEYS:
            name = key.removeprefix("optimizer.")
            yield key, OPTIMIZER_BLOCK_FIELDS.get(name, f"optimizer.{name}"), value
        else:
            yield key, key, value


def _refuse_two_values(pairs, where: str):
    """`optimizer.lr=1e-3 lr=0.5`: one setting spelled two ways in one place would silently keep one
    (the same key repeated is an override: the later wins)."""
    seen = {}
    for spelling, target, value in _spellings(pairs):
        first = seen.setdefault(target, (spelling, value))
        if first[0] != spelling and first[1] != value:
            raise ConfigError(f"{where} sets {target} twice: {first[0]}={first[1]} and {spelling}={value}; "
                              f"give it once")
        seen[target] = (spelling, value) if first[0] == spelling else first


def _drop_other_optimizers_args(values: dict, file_values: dict, overrides: dict) -> dict:
    """`optimizer=muon` over a file written for AdamW: the file's own AdamW hyperparameters (betas, ...)
    do not carry over; they are dropped with a notice, not refused. Overridden ones stay and are checked."""
    before, now = file_values.get("optimizer"), values.get("optimizer")
    if "optimizer" not in overrides or before == now or not isinstance(now, str) or now not in REGISTRY:
        return values
    own = get_optimizer_spec(now).all_hyperparams
    given = {k.removeprefix("optimizer.") for k in overrides}
    dropped = [k for k in file_values.get("optimizer_args", {}) if k not in own and k not in given]
    if dropped:
        print(f"note: optimizer={now} replaces the config file's {before}; its {', '.join(dropped)} "
              f"(not {now}'s) are dropped", file=sys.stderr)
        values["optimizer_args"] = {k: v for k, v in values["optimizer_args"].items() if k not in dropped}
    return values


def load_config(path: str | None, overrides: list[str]) -> RunConfig:
    values = {}
    if path:
        path = packaged_configs.resolve(path)  # a file, else a packaged config's name (`--config sst2`)
        values = read_yaml_mapping(path)
        unknown = [k for k in values if k not in FIELDS and k not in LEGACY_OPTIMIZER_KEYS]
        if unknown:
            raise one_of(f"config key (in {path})", unknown[0], FIELDS)
        _refuse_two_values(values.items(), f"config file {path!r}")
        values = _normalise_optimizer(values)
    pairs = [parse_override(o) for o in overrides]
    _refuse_two_values(pairs, "the command line")
    args = values.get("optimizer_args")
    file_values = {**values, "optimizer_args": dict(args) if isinstance(args, dict) else {}}  # (else refused below)
    values = _normalise_optimizer({**values, **dict(pairs)})
    values = _drop_other_optimizers_args(values, file_values, dict(pairs))
    # YAML reads 5e-5 as a string (YAML 1.1); accept it as the number it obviously is.
    for key in ("lr", "weight_decay", "warmup_ratio", "max_grad_norm"):
        if isinstance(values.get(key), str):
            try:
                values[key] = float(values[key])
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {values[key]!r}") from None
    if isinstance(values.get("optimizer_args"), dict):
        values["optimizer_args"] = {k: _exponent_number(v) for k, v in values["optimizer_args"].items()}
    _refuse_unused_model(values, file_values, dict(pairs))
    return RunConfig(**values)


def _refuse_unused_model(values: dict, file_values: dict, overrides: dict):
    """A `model` given beside model_config and tokenizer names nothing that runs (model_config builds
    the model, tokenizer loads the tokenizer), yet results.json would record it as the model. Refused
    where one source says all three: the command line, or a config file by itself. (Overriding a
    file's model with model_config and tokenizer is how a packaged config is reused on another model.)"""
    if not (values.get("model_config") and values.get("tokenizer")):
        return
    if "model" in overrides or all(file_values.get(k) for k in ("model", "model_config", "tokenizer")):
        model = values["model"]
        raise ConfigError(f"model {model!r} is not used: model_config builds the model and tokenizer names the "
                          f"tokenizer; drop model, or set model_config=null to load {model!r}")


def _exponent_number(value):
    """'1e-8' (a string to YAML 1.1) -> 1e-8; anything else unchanged."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        return float(value)
    return value
