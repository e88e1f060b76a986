"""`finetune-opt study`: optimizers x seeds (x hyperparameter axes) through a recipe, resumable.

Each cell is one recipe run in its own process (its own peak memory, its own Accelerate state),
written to <output_dir>/cells/<cell id>/results.json. A cell whose results.json exists is done:
re-running the study runs only the missing cells, then rebuilds the report from all of them.
"""

import itertools
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from finetune_opt.config import FIELDS, load_config
from finetune_opt.errors import ConfigError, one_of
from finetune_opt.tasks import RECIPES, get_task

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
ENGINES = list(dict.fromkeys(engine for recipes in RECIPES.values() for engine in recipes))


@dataclass
class StudyConfig:
    base_config: str                                   # a recipe YAML (RunConfig fields)
    output_dir: str
    overrides: dict = field(default_factory=dict)      # RunConfig fields for every cell
    engines: list = field(default_factory=lambda: ["accelerate"])
    optimizers: list = field(default_factory=lambda: ["adam_l2", "adamw", "adamw_fused"])
    seeds: list = field(default_factory=lambda: [1, 2, 3])
    axes: dict = field(default_factory=dict)           # extra grid axes, e.g. {lr: [3e-5, 5e-5]}
    sensitivity: dict | None = None                    # {optimizers, lr, weight_decay, seeds}: the lr x wd map


def load_study(path: str) -> StudyConfig:
    if not os.path.isfile(path):
        raise ConfigError(f"study config {path!r} does not exist")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    known = list(StudyConfig.__dataclass_fields__)
    unknown = [k for k in raw if k not in known]
    if unknown:
        raise one_of(f"study key (in {path})", unknown[0], known)
    try:
        study = StudyConfig(**raw)
    except TypeError as e:
        raise ConfigError(f"study config {path}: {e}") from None
    validate(study)
    return study


def validate(study: StudyConfig):
    base = load_config(study.base_config, [f"{k}={json.dumps(v)}" for k, v in study.overrides.items()])
    task = get_task(base.task)
    for engine in study.engines:
        if engine not in ENGINES:
            raise one_of("engine", engine, ENGINES)
        if engine not in task.recipes:
            raise ConfigError(f"engine {engine!r} has no recipe for task {base.task!r}; "
                              f"its engines: {', '.join(task.recipes)}")
    axes = dict(study.axes)
    if study.sensitivity:
        extra = set(study.sensitivity) - {"optimizers", "lr", "weight_decay", "seeds"}
        if extra:
            raise one_of("sensitivity key", sorted(extra)[0], ["optimizers", "lr", "weight_decay", "seeds"])
    for key in axes:
        if key not in FIELDS or key in ("optimizer", "seed", "output_dir"):
            raise one_of("axis", key, [f for f in FIELDS if f not in ("optimizer", "seed", "output_dir")])
    for cell in expand(study):  # every cell's config must validate before the first one runs
        load_config(study.base_config, cell_overrides(study, cell))


def _axis_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def expand(study: StudyConfig) -> list[dict]:
    """The cells: main grid (engine x optimizer x seed x axes), then the sensitivity map
    (optimizer x lr x weight_decay x seed, Accelerate engine). Ids are stable across runs."""
    cells = []
    names = list(study.axes)
    for engine, opt, seed, *values in itertools.product(study.engines, study.optimizers, study.seeds,
                                                       *study.axes.values()):
        params = dict(zip(names, values))
        cells.append({"group": "main", "engine": engine, "optimizer": opt, "seed": seed, "params": params})
    if study.sensitivity:
        s = study.sensitivity
        for opt, lr, wd, seed in itertools.product(s.get("optimizers", ["adam_l2", "adamw"]), s["lr"],
                                                   s["weight_decay"], s.get("seeds", [study.seeds[0]])):
            cells.append({"group": "sensitivity", "engine": "accelerate", "optimizer": opt, "seed": seed,
                          "params": {"lr": lr, "weight_decay": wd}})
    for c in cells:
        tail = "".join(f"-{k}{_axis_value(v)}" for k, v in c["params"].items())
        c["id"] = f"{c['group']}-{c['engine']}-{c['optimizer']}-seed{c['seed']}{tail}"
    return cells


def cell_dir(study: StudyConfig, cell: dict) -> Path:
    return Path(study.output_dir) / "cells" / cell["id"]


def cell_overrides(study: StudyConfig, cell: dict) -> list[str]:
    # overwrite: a cell without results.json is run from the start, over what a stopped attempt left
    values = {**study.overrides, **cell["params"], "optimizer": cell["optimizer"], "seed": cell["seed"],
              "output_dir": str(cell_dir(study, cell)), "overwrite": True}
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]  # JSON is YAML flow syntax


def run_cell(study: StudyConfig, cell: dict, base_task: str):
    script = RECIPES_DIR / get_task(base_task).recipes[cell["engine"]]
    cmd = [sys.executable, str(script), "--config", study.base_config, *cell_overrides(study, cell)]
    log_path = cell_dir(study, cell).with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait()
        finally:
            if proc.poll() is None:  # the study itself was stopped: stop its cell too
                proc.terminate()
                proc.wait()
    if code != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or [""]
        raise ConfigError(f"cell {cell['id']} failed (exit {code}): {tail[0]} (log: {log_path})")


def run_study(config_path: str) -> str:
    """Run the missing cells, then (re)build the report; returns the report's Markdown."""
    from finetune_opt.study_report import write_report

    study = load_study(config_path)
    task = load_config(study.base_config, []).task
    cells = expand(study)
    todo = [c for c in cells if not (cell_dir(study, c) / "results.json").is_file()]
    print(f"study: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run", flush=True)
    # SIGTERM -> SystemExit, so the finally above stops the running cell instead of orphaning it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for i, cell in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {cell['id']}", flush=True)
        run_cell(study, cell, task)
    return write_report(study, cells)
