"""Reading a run's configuration: a YAML file (or a packaged config's name) and `key=value`
overrides, each setting written flat, dotted or in its section's block -> a RunConfig."""

import sys

import yaml

from finetune_opt.config import builtin as packaged_configs
from finetune_opt.config.keys import check_key, nested, settings, value_of
from finetune_opt.config.run_config import RunConfig
from finetune_opt.config.schema import OptimizerSection
from finetune_opt.errors import ConfigError
from finetune_opt.optim import REGISTRY, get_optimizer_spec


def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    key = key.lstrip("-").replace("-", "_")
    if not sep:
        raise ConfigError(f"override {text!r} is not key=value")
    check_key(key)  # an unknown key: one line, before its value is read
    try:
        return key, yaml.safe_load(value)  # "1e-4" -> 1e-4, "null" -> None, "[0.9, 0.95]" -> list
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {getattr(e, 'problem', e)}") from None


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


def _drop_other_optimizers_args(merged: dict, file: dict, given: dict) -> dict:
    """`optimizer=muon` over a file written for AdamW: the file's own AdamW hyperparameters (betas, ...)
    do not carry over; they are dropped with a notice, not refused. Overridden ones stay and are checked.
    (Each argument: {(section, field): (as written, value)}.)"""
    before, now = value_of(file, "optimizer", "name"), value_of(merged, "optimizer", "name")
    if ("optimizer", "name") not in given or before == now or not isinstance(now, str) or now not in REGISTRY:
        return merged
    own = get_optimizer_spec(now).all_hyperparams
    dropped = [f for s, f in file if s == "optimizer" and f not in OptimizerSection.model_fields and f not in own
               and ("optimizer", f) not in given]
    if dropped:
        print(f"note: optimizer={now} replaces the config file's {before}; its {', '.join(dropped)} "
              f"(not {now}'s) are dropped", file=sys.stderr)
    return {place: v for place, v in merged.items() if place[0] != "optimizer" or place[1] not in dropped}


def load_config(path: str | None, overrides: list[str]) -> RunConfig:
    """A config file (flat keys, dotted keys or section blocks) with `key=value` overrides on top,
    setting by setting -> a validated RunConfig."""
    file = {}
    if path:
        path = packaged_configs.resolve(path)  # a file, else a packaged config's name (`--config sst2`)
        file = settings(read_yaml_mapping(path).items(), f"config file {path!r}", f" (in {path})")
    given = settings([parse_override(o) for o in overrides], "the command line")
    merged = _drop_other_optimizers_args({**file, **given}, file, given)
    _refuse_unused_model(merged, file, given)
    return RunConfig(**nested(merged))


def _refuse_unused_model(merged: dict, file: dict, given: dict):
    """A `model` given beside model_config and tokenizer names nothing that runs (model_config builds
    the model, tokenizer loads the tokenizer), yet results.json would record it as the model. Refused
    where one source says all three: the command line, or a config file by itself. (Overriding a
    file's model with model_config and tokenizer is how a packaged config is reused on another model.)"""
    places = ("name", "config", "tokenizer")
    if not (value_of(merged, "model", "config") and value_of(merged, "model", "tokenizer")):
        return
    if ("model", "name") in given or all(value_of(file, "model", p) for p in places):
        model = value_of(merged, "model", "name")
        raise ConfigError(f"model {model!r} is not used: model_config builds the model and tokenizer names the "
                          f"tokenizer; drop model, or set model_config=null to load {model!r}")
