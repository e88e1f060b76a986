"""Labels, checked at load: class ids in [0, num_labels), regression targets finite floats, names
mapped to ids. A bad label stops the run here, with its file, row and value, not mid-training."""

import math
import re

from finetune_opt.errors import ConfigError
from finetune_opt.tasks import REGRESSION, Task

INTEGER = re.compile(r"[+-]?\d+")


def parse_label(value):
    """An int, a float, or a name (str): what a label in a file or a Hub split means."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return value
    text = str(value).strip()
    if INTEGER.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _scalar(value, where):
    """A JSON label that is a list or an object would become a class named by its text."""
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{where}: label {value!r} is a {'list' if isinstance(value, list) else 'mapping'}, "
                          f"not a class id, name or number")
    return value


def encode_labels(task: Task, tables: dict) -> tuple[dict, tuple | None]:
    """({split: [label id or float target]}, label names or None for regression)."""
    if task.problem_type == REGRESSION:
        return {split: [_target(v, t.where(i)) for i, v in enumerate(t.columns["label"])]
                for split, t in tables.items()}, None
    names = task.label_names or _names_in_training_data(tables["train"], task)
    return {split: [_class_id(v, names, t.where(i), task) for i, v in enumerate(t.columns["label"])]
            for split, t in tables.items()}, names


def _target(value, where) -> float:
    parsed = parse_label(_scalar(value, where))
    if isinstance(parsed, str) or not math.isfinite(parsed):
        raise ConfigError(f"{where}: regression target {value!r} is not a finite number")
    return float(parsed)


def _float_error(value, where, task):
    return ConfigError(f"{where}: label {value!r} is a float, but task {task.name!r} is classification "
                       f"(class ids or names; for a numeric target use task=text_regression)")


def _names_in_training_data(table, task) -> tuple:
    """The classes found in the training split, sorted (numerically when they are all integers)."""
    parsed = {}
    for i, value in enumerate(table.columns["label"]):
        label = parse_label(_scalar(value, table.where(i)))
        if isinstance(label, float):
            raise _float_error(value, table.where(i), task)
        parsed.setdefault(str(label), label)
    numeric = all(isinstance(v, int) for v in parsed.values())
    return tuple(sorted(parsed, key=lambda k: parsed[k] if numeric else k))


def _class_id(value, names, where, task) -> int:
    label = parse_label(_scalar(value, where))
    if isinstance(label, float):
        raise _float_error(value, where, task)
    if task.label_names is None:  # names came from the training data: integers are names too
        if str(label) not in names:
            raise ConfigError(f"{where}: label {value!r} is not in the training data's labels: {', '.join(names)}")
        return names.index(str(label))
    if isinstance(label, int):
        if not 0 <= label < len(names):
            raise ConfigError(f"{where}: label {value!r} is outside [0, {len(names)}) for task {task.name!r}")
        return label
    if label not in names:
        raise ConfigError(f"{where}: label {value!r} is not one of: {', '.join(names)} (or ids 0..{len(names) - 1})")
    return names.index(label)
