"""Task metrics as `evaluate` modules: ours, shipped in the package (finetune_opt/metrics/modules/<name>/<name>.py,
computed by scikit-learn and scipy; no Hub), or any module `evaluate.load` can load (a local path; a Hub
name, with Hub access or in its cache) for the by-columns tasks' `metric:` key.

Names and definitions are GLUE's: F1 is binary F1 of the positive class (label 1), as GLUE reports it
for MRPC and QQP; Matthews correlation for CoLA; Pearson and Spearman correlation for STS-B.
A correlation of constant predictions is undefined: it is reported as NaN, not as a number.
`evaluate` is imported when a metric is first loaded, not before (it imports transformers' pipelines).
"""

import importlib
import numbers
import os
from pathlib import Path

import numpy as np

from finetune_opt.errors import ConfigError

MODULES_DIR = Path(__file__).parent / "modules"
# every modules/<name>/<name>.py: a module added there is packaged, listed and tested without more
PACKAGED = tuple(sorted(path.stem for path in MODULES_DIR.glob("*/*.py") if path.stem == path.parent.name))

_loaded = {}  # name or path as given -> its evaluate module: loaded once per process


def module_path(name: str) -> Path:
    """The file of a packaged module (evaluate.load takes it, or its folder, too)."""
    return MODULES_DIR / name / f"{name}.py"


def is_path(name: str) -> bool:
    """A local module (a file, or a folder holding <folder>.py), not a Hub name."""
    return name.endswith(".py") or name.startswith((".", "/", "~")) or os.path.exists(name)


def _load_packaged(name: str):
    """Ours, imported from the package directly: evaluate.load would copy it into the Hub's module cache first."""
    import evaluate

    module = importlib.import_module(f"finetune_opt.metrics.modules.{name}.{name}")
    cls = next(v for v in vars(module).values()
               if isinstance(v, type) and issubclass(v, evaluate.Metric) and v.__module__ == module.__name__)
    return cls(keep_in_memory=True)


def _load_other(name: str):
    import evaluate

    if is_path(name):
        path = os.path.expanduser(name)
        if not os.path.exists(path):
            raise ConfigError("no such file or directory")
        return evaluate.load(path, keep_in_memory=True)
    try:
        return evaluate.load(name, keep_in_memory=True)
    except FileNotFoundError:
        raise ConfigError("not a packaged module, and not on the Hugging Face Hub or in its cache (offline?)") from None


def load_metric(name: str):
    """The evaluate module for a packaged name, a local path, or a Hub name; one line if it cannot load."""
    if name not in _loaded:
        try:
            _loaded[name] = _load_packaged(name) if name in PACKAGED else _load_other(name)
        except Exception as e:  # noqa: BLE001  (a user's module may fail in any way: it becomes one line)
            reason = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
            reason = (reason.strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"metric {name!r} cannot be loaded: {reason}; available offline: "
                              f"{', '.join(PACKAGED)}") from None
    return _loaded[name]


def _number(value):
    """A module's value as results.json keeps it: a float (NaN stays NaN); None for anything else."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


def compute_metrics(names, predictions, references) -> dict:
    """{key: value} for the metric modules named (class ids, or regression outputs, as 1-D arrays): each
    module contributes every key of its result (ours: one, its own name)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    result = {}
    for name in names:
        values = load_metric(name).compute(predictions=predictions, references=references)
        result.update({k: _number(v) for k, v in values.items()})
    return result


def _prediction_types(module) -> set:
    """The dtypes a module declares for its predictions (evaluate allows a list of alternative features)."""
    features = module.features if isinstance(module.features, list) else [module.features]
    return {f["predictions"].dtype for f in features if f and hasattr(f.get("predictions"), "dtype")}


def probe(problem: str, num_labels: int = 2) -> tuple[list, list]:
    """(predictions, references) of the kind a run gives its metrics: class ids 0..num_labels-1, some
    right and some wrong, or regression outputs."""
    if problem == "regression":
        return [0.5, 1.5, 2.0, 3.5], [1.0, 1.0, 2.5, 3.0]
    references = list(range(num_labels)) * 2
    return references[:num_labels] + references[1:num_labels] + [0], references


def check_metrics(names, problem: str, num_labels: int = 2) -> None:
    """A `metric:` list: every module loads, and scores a few predictions of the kind the run will give it
    ("classification": class ids, "regression": floats) with numbers; two modules reporting the same key
    are refused (one would hide the other). At config validation with two classes, and again when the
    training data has more (binary F1 cannot score three classes)."""
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names)):
        raise ConfigError(f"metric must be a list of evaluate module names or paths, got {names!r}")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ConfigError(f"metric lists {twice!r} twice")
    seen = {}
    for name in names:
        module = load_metric(name)
        declared = _prediction_types(module)
        if problem == "regression" and declared and all(t.startswith(("int", "uint", "bool")) for t in declared):
            raise ConfigError(f"metric {name!r} scores class ids (predictions: {', '.join(sorted(declared))}), "
                              f"not the numbers task=text_regression predicts")
        try:
            predictions, references = probe(problem, num_labels)
            values = module.compute(predictions=predictions, references=references)
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [""])[0]
            what = f"{num_labels} classes" if problem == "classification" else "regression outputs"
            raise ConfigError(f"metric {name!r} cannot score {what}: {type(e).__name__}: {first}") from None
        if not isinstance(values, dict) or not values:
            raise ConfigError(f"metric {name!r} returned {values!r}, not a mapping of metric names to numbers")
        for key, value in values.items():
            if _number(value) is None:
                raise ConfigError(f"metric {name!r} reports {key}={value!r}, not a number")
            if key in seen:
                raise ConfigError(f"metrics {seen[key]!r} and {name!r} both report {key!r}; keep one")
            seen[key] = name
