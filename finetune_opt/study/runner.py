"""`finetune-opt study`: tasks x optimizers x seeds (x hyperparameter axes) through a recipe, resumable.

Each cell is one recipe run in its own process (its own peak memory, its own Accelerate state),
written to <output_dir>/cells/<cell id>/results.json. A cell whose results.json (or failed.json: its
training stopped on non-finite losses) exists is done: re-running the study runs only the missing
cells, then rebuilds the report from all of them.

With `tuning`, each optimizer's learning rate is chosen per task before the seeds run: a grid around
the optimizer's own default (its registry spec), each point trained and scored on examples held out
of the training split (`holdout_examples`; the dev set is not read), then every seed runs at the
selected lr. Seeds are shared across optimizers, so differences against the baseline are paired.
"""

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field


from finetune_opt.config import builtin as packaged_configs
from finetune_opt.config.run_config import FIELDS
from finetune_opt.config.keys import flat_spellings
from finetune_opt.config.loading import load_config, parse_override, read_yaml_mapping
from finetune_opt.errors import ConfigError, one_of
from finetune_opt.optim import get_optimizer_spec
from finetune_opt.study.cells import cell_dir, cell_done, load_cell
from finetune_opt.tasks import RECIPES, get_task, recipe_module

ENGINES = list(dict.fromkeys(engine for recipes in RECIPES.values() for engine in recipes))
RESERVED = ("optimizer", "seed", "output_dir", "holdout_examples")  # set by the study itself, per cell
TUNING_KEYS = ("holdout_examples", "lr_factors", "lr", "seeds", "overrides")
SENSITIVITY_KEYS = ("task", "optimizers", "lr", "weight_decay", "seeds")
STOPPED = 1  # a recipe's exit code when training stopped (non-finite losses): a result, not a bug


@dataclass
class StudyConfig:
    output_dir: str
    base_config: str | None = None                     # a packaged config's name, or a recipe YAML
                                                       # (RunConfig fields) relative to the study file
    overrides: dict = field(default_factory=dict)      # RunConfig fields for every cell
    tasks: dict = field(default_factory=dict)          # label -> {base_config, overrides}: several tasks
    engines: list = field(default_factory=lambda: ["accelerate"])
    optimizers: list = field(default_factory=lambda: ["adam_l2", "adamw", "adamw_fused"])
    seeds: list = field(default_factory=lambda: [1, 2, 3])
    axes: dict = field(default_factory=dict)           # extra grid axes, e.g. {lr: [3e-5, 5e-5]}
    tuning: dict | None = None                         # {holdout_examples, lr_factors, lr, seeds, overrides}
    baseline: str = "adamw"                            # the optimizer every other one is compared with
    sensitivity: dict | None = None                    # {task, optimizers, lr, weight_decay, seeds}: lr x wd map
    # `finetune-opt study ... key=value`: RunConfig fields for every cell, over the YAML's (another
    # machine's model or data path); not a YAML key.
    command_line: dict = field(default_factory=dict, init=False)

    def task_configs(self) -> dict:
        """label -> (base_config, overrides): the `tasks` block, else the one base_config."""
        if not self.tasks:
            if not self.base_config:
                raise ConfigError("a study needs base_config (one task) or tasks: {label: {base_config, ...}}")
            return {load_config(self.base_config, []).task: (self.base_config, {**self.overrides, **self.command_line})}
        out = {}
        for label, block in self.tasks.items():
            block = block or {}
            extra = set(block) - {"base_config", "overrides"}
            if extra:
                raise one_of(f"key of task {label!r}", min(extra), ["base_config", "overrides"])
            base = block.get("base_config", self.base_config)
            if not base:
                raise ConfigError(f"task {label!r} has no base_config")
            out[label] = (base, {**self.overrides, **(block.get("overrides") or {}), **self.command_line})
        return out


def load_study(path: str, overrides: list[str] = ()) -> StudyConfig:
    raw = _read_study_yaml(path)
    known = [name for name, f in StudyConfig.__dataclass_fields__.items() if f.init]
    unknown = [k for k in raw if k not in known]
    if unknown:
        raise one_of(f"study key (in {path})", unknown[0], known)
    try:
        study = StudyConfig(**raw)
    except TypeError as e:
        raise ConfigError(f"study config {path}: {e}") from None
    study.command_line = dict(parse_override(o) for o in overrides)
    check_shapes(study)
    spell_overrides_flat(study, path)
    resolve_base_configs(study, os.path.dirname(os.path.abspath(path)))
    validate(study)
    return study


def spell_overrides_flat(study: StudyConfig, path: str):
    """Every overrides block (written flat or in sections) by flat names, so that a task's block
    overrides the study's one setting at a time, not one section for another."""
    study.overrides = flat_spellings(study.overrides, f"study config {path!r}: overrides")
    for label, block in study.tasks.items():
        if block and isinstance(block.get("overrides"), dict):
            block["overrides"] = flat_spellings(block["overrides"], f"study config {path!r}: task {label!r} overrides")
    if isinstance((study.tuning or {}).get("overrides"), dict):
        study.tuning["overrides"] = flat_spellings(study.tuning["overrides"],
                                                   f"study config {path!r}: tuning overrides")


def resolve_base_configs(study: StudyConfig, folder: str):
    """Every base_config -> the file it names: a packaged config's name (`sst2`), or a path relative to
    the study file's folder (not the working directory), so a study runs from anywhere."""
    if study.base_config is not None:
        study.base_config = packaged_configs.resolve(study.base_config, folder, "base_config")
    for label, block in study.tasks.items():
        if block and block.get("base_config") is not None:
            block["base_config"] = packaged_configs.resolve(block["base_config"], folder,
                                                            f"task {label!r}: base_config")


def _read_study_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"study config {path!r} does not exist")
    return read_yaml_mapping(path, "study config", "study keys")


def _seed(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")


def _check_list(value, name: str, ok, rule: str):
    """A non-empty list of distinct valid items: a repeated seed would count one run twice (n=2 and
    a zero-width interval from one run); a scalar where a list belongs would fail mid-study."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{name} must be a non-empty list of {rule}, got {value!r}")
    bad = [v for v in value if not ok(v)]
    if bad:
        raise ConfigError(f"{name} must be a list of {rule}, got {bad[0]!r} in {value!r}")
    repeated = next((v for i, v in enumerate(value) if v in value[:i]), None)
    if repeated is not None:
        raise ConfigError(f"{name} lists {repeated!r} twice; each must appear once")


def _check_mapping(value, name: str):
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a mapping, got {value!r}")


def check_shapes(study: StudyConfig):
    """Every key's shape before any cell is built: lists, mappings, numbers where they belong."""
    _check_list(study.seeds, "seeds", _seed, "integers >= 0")
    _check_list(study.optimizers, "optimizers", lambda v: isinstance(v, str), "optimizer names")
    _check_list(study.engines, "engines", lambda v: isinstance(v, str), "engine names")
    for name in ("overrides", "tasks", "axes"):
        _check_mapping(getattr(study, name), name)
    for label, block in study.tasks.items():
        _check_mapping(block or {}, f"task {label!r}")
    for key, values in study.axes.items():
        _check_list(values, f"axis {key!r}", lambda v: v is not None, "values")
    if study.tuning is not None:
        _check_mapping(study.tuning, "tuning")
        tuning = study.tuning
        if "seeds" in tuning:
            _check_list(tuning["seeds"], "tuning.seeds", _seed, "integers >= 0")
        if "lr_factors" in tuning:
            _check_list(tuning["lr_factors"], "tuning.lr_factors", _positive, "numbers > 0")
        _check_mapping(tuning.get("lr") or {}, "tuning.lr")
        for opt, lrs in (tuning.get("lr") or {}).items():
            _check_list(lrs, f"tuning.lr.{opt}", _positive, "numbers > 0")
    if study.sensitivity is not None:
        _check_sensitivity(study.sensitivity)


def _check_sensitivity(block):
    _check_mapping(block, "sensitivity")
    for key in ("lr", "weight_decay"):
        if key not in block:
            raise ConfigError(f"sensitivity needs {key}: a list of values (the map is lr x weight_decay)")
    _check_list(block["lr"], "sensitivity.lr", _positive, "numbers > 0")
    _check_list(block["weight_decay"], "sensitivity.weight_decay", _number, "numbers >= 0")
    if "seeds" in block:
        _check_list(block["seeds"], "sensitivity.seeds", _seed, "integers >= 0")
    if "optimizers" in block:
        _check_list(block["optimizers"], "sensitivity.optimizers", lambda v: isinstance(v, str), "optimizer names")


def _check_keys(block: dict, name: str, allowed):
    extra = set(block) - set(allowed)
    if extra:
        raise one_of(f"{name} key", min(extra), allowed)


def validate(study: StudyConfig):
    tasks = study.task_configs()
    for base_config, overrides in tasks.values():
        task = get_task(load_config(base_config, _as_overrides(overrides)).task)
        for engine in study.engines:
            if engine not in ENGINES:
                raise one_of("engine", engine, ENGINES)
            if engine not in task.recipes:
                raise ConfigError(f"engine {engine!r} has no recipe for task {task.name!r}; "
                                  f"its engines: {', '.join(task.recipes)}")
    allowed = [f for f in FIELDS if f not in RESERVED]
    for key in study.axes:
        if key not in allowed and not key.startswith("optimizer."):
            raise one_of("axis", key, allowed)
    if study.sensitivity:
        _check_keys(study.sensitivity, "sensitivity", SENSITIVITY_KEYS)
        if study.sensitivity.get("task", next(iter(tasks))) not in tasks:
            raise one_of("sensitivity task", study.sensitivity["task"], tasks)
    if study.tuning is not None:
        _check_keys(study.tuning, "tuning", TUNING_KEYS)
        if not isinstance(study.tuning.get("holdout_examples"), int):
            raise ConfigError("tuning needs holdout_examples: how many training examples to choose the lr on")
        if "lr" in study.axes:
            raise ConfigError("with tuning the lr is chosen per optimizer: remove 'lr' from axes")
        for name in study.tuning.get("lr") or {}:
            if name not in study.optimizers:
                raise one_of("optimizer in tuning.lr", name, study.optimizers)
    if study.baseline not in study.optimizers:
        raise one_of("baseline (one of the study's optimizers)", study.baseline, study.optimizers)
    # Every cell's config must validate before the first one runs (the main grid at each candidate lr).
    lrs = lr_grid(study) if study.tuning is not None else {}
    for cell in tuning_cells(study) + final_cells(study, {k: v[0] for k, v in lrs.items()}):
        load_config(tasks[cell["task"]][0], cell_overrides(study, cell))


def _as_overrides(values: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]  # JSON is YAML flow syntax


def _axis_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_axis_value(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _with_ids(cells: list[dict]) -> list[dict]:
    for c in cells:
        tail = "".join(f"-{k}{_axis_value(v)}" for k, v in c["params"].items())
        c["id"] = f"{c['task']}-{c['group']}-{c['engine']}-{c['optimizer']}-seed{c['seed']}{tail}"
    return cells


def lr_grid(study: StudyConfig) -> dict:
    """(task label, optimizer) -> candidate lrs: tuning.lr[optimizer] if given, else the spec's
    default_lr times each of lr_factors (3 significant digits, so ids stay readable)."""
    factors = study.tuning.get("lr_factors", [1 / 3, 1, 3])
    explicit = study.tuning.get("lr") or {}
    grid = {}
    for label, opt in itertools.product(study.task_configs(), study.optimizers):
        default = get_optimizer_spec(opt).default_lr
        grid[label, opt] = sorted(explicit.get(opt) or {float(f"{default * f:.3g}") for f in factors})
    return grid


def tuning_cells(study: StudyConfig) -> list[dict]:
    """The lr grid of each task and optimizer, scored on held-out training examples (first engine)."""
    if study.tuning is None:
        return []
    seeds = study.tuning.get("seeds", study.seeds[:1])
    cells = [{"task": label, "group": "tune", "engine": study.engines[0], "optimizer": opt, "seed": seed,
              "params": {"lr": lr}}
             for (label, opt), lrs in lr_grid(study).items() for lr in lrs for seed in seeds]
    return _with_ids(cells)


def final_cells(study: StudyConfig, selected: dict) -> list[dict]:
    """The main grid (task x engine x optimizer x seed x axes), each optimizer at its selected lr
    when tuned ({(task, optimizer): lr}), then the lr x weight decay map. Ids are stable across runs.
    Seed-major order: a study stopped part-way has every task and optimizer at its first seeds rather
    than a few of them at every seed."""
    cells = []
    names = list(study.axes)
    for seed, label in itertools.product(study.seeds, study.task_configs()):
        for engine, opt, *values in itertools.product(study.engines, study.optimizers, *study.axes.values()):
            params = dict(zip(names, values))
            if (label, opt) in selected:
                params = {"lr": selected[label, opt], **params}
            cells.append({"task": label, "group": "main", "engine": engine, "optimizer": opt, "seed": seed,
                          "params": params})
    if study.sensitivity:
        s = study.sensitivity
        for seed, opt, lr, wd in itertools.product(s.get("seeds", [study.seeds[0]]),
                                                   s.get("optimizers", ["adam_l2", "adamw"]), s["lr"],
                                                   s["weight_decay"]):
            cells.append({"task": s.get("task", next(iter(study.task_configs()))), "group": "sensitivity",
                          "engine": "accelerate", "optimizer": opt, "seed": seed,
                          "params": {"lr": lr, "weight_decay": wd}})
    return _with_ids(cells)


def cell_overrides(study: StudyConfig, cell: dict) -> list[str]:
    overrides = study.task_configs()[cell["task"]][1]
    if cell["group"] == "tune":
        overrides = {**overrides, **(study.tuning.get("overrides") or {}),
                     "holdout_examples": study.tuning["holdout_examples"]}
    # overwrite: a cell without results.json is run from the start, over what a stopped attempt left
    values = {**overrides, **cell["params"], "optimizer": cell["optimizer"], "seed": cell["seed"],
              "output_dir": str(cell_dir(study, cell)), "overwrite": True}
    return _as_overrides(values)


class CellRunner:
    """Runs cells as subprocesses, `parallel` at a time; SIGTERM stops every running cell."""

    def __init__(self, study: StudyConfig, parallel: int = 1):
        self.study, self.parallel = study, parallel
        self.running, self.lock, self.stopping = set(), threading.Lock(), False

    def stop(self, *_):
        self.stopping = True
        with self.lock:
            for proc in self.running:
                proc.terminate()
        sys.exit(143)

    def run_all(self, cells: list[dict], phase: str):
        todo = [c for c in cells if not cell_done(self.study, c)]
        print(f"study ({phase}): {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run", flush=True)
        progress = iter(range(1, len(todo) + 1))
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            futures = [pool.submit(self.run_cell, c, progress, len(todo)) for c in todo]
            # Wake up every second: when the kernel hands SIGTERM to a worker thread, Python runs the
            # handler in the main thread only once that thread runs again, and an untimed wait would
            # first let the running cells finish.
            pending = futures
            while pending:
                pending = wait(pending, timeout=1.0).not_done
            errors = [str(e) for e in (f.exception() for f in futures) if e is not None]
        if errors:
            raise ConfigError(errors[0] + (f" (and {len(errors) - 1} more failed cells)" if len(errors) > 1 else ""))

    def run_cell(self, cell: dict, progress, total: int):
        base_config = self.study.task_configs()[cell["task"]][0]
        task = load_config(base_config, []).task
        recipe = recipe_module(get_task(task).recipes[cell["engine"]])  # in the package: no checkout needed
        cmd = [sys.executable, "-m", recipe, "--config", base_config, *cell_overrides(self.study, cell)]
        log_path = cell_dir(self.study, cell).parent / f"{cell['id']}.log"  # (ids hold dots: lr0.0003)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if self.stopping:
                return
            print(f"[{next(progress)}/{total}] {cell['id']}", flush=True)
            log = open(log_path, "w")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            self.running.add(proc)
        try:
            code = proc.wait()
        finally:
            log.close()
            with self.lock:
                self.running.discard(proc)
        if code == 0 or self.stopping:
            return
        last = (log_path.read_text().strip().splitlines() or [""])[-1]
        if code == STOPPED:  # diverged: a result of this lr, recorded so resume does not rerun it
            cell_dir(self.study, cell).mkdir(parents=True, exist_ok=True)
            (cell_dir(self.study, cell) / "failed.json").write_text(json.dumps({"failed": last}))
            return
        raise ConfigError(f"cell {cell['id']} failed (exit {code}): {last} (log: {log_path})")


def select_lr(study: StudyConfig, cells: list[dict]) -> dict:
    """(task label, optimizer) -> {lr, curve: {lr: mean held-out metric over tuning seeds}}.
    The best mean in the task's direction wins; a stopped run or an undefined metric counts as worst."""
    curves = {}
    for c in cells:
        r = load_cell(study, c)
        value = r.get("metrics", {}).get(get_task(r["task"]).headline) if "failed" not in r else None
        value = math.nan if value is None else value
        curves.setdefault((c["task"], c["optimizer"]), {}).setdefault(c["params"]["lr"], []).append(value)
    selected = {}
    for key, curve in curves.items():
        task = get_task(load_config(study.task_configs()[key[0]][0], []).task)
        means = {lr: sum(v) / len(v) for lr, v in sorted(curve.items())}
        best = min(means, key=lambda lr: task.rank_key(means[lr]))  # ties: the smaller lr
        selected[key] = {"lr": best, "curve": means}
    return selected


def run_study(config_path: str, parallel: int = 1, overrides: list[str] = (), report_only: bool = False) -> str:
    """Run the missing cells (tuning first, then the selected lrs' seeds), then (re)build the report.
    report_only: run nothing, report the finished cells (see finished_cells)."""
    from finetune_opt.study.report import write_report

    if not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"--parallel must be an integer >= 1, got {parallel!r}")
    study = load_study(config_path, overrides)
    if report_only:
        return write_report(study, *finished_cells(study))
    runner = CellRunner(study, parallel)
    # SIGTERM -> stop the running cells, then exit; resume finishes them.
    signal.signal(signal.SIGTERM, runner.stop)
    tune = tuning_cells(study)
    runner.run_all(tune, "tuning")
    selection = select_lr(study, tune) if tune else {}
    cells = final_cells(study, {k: v["lr"] for k, v in selection.items()})
    runner.run_all(cells, "seeds")
    return write_report(study, tune, cells, selection)


def finished_cells(study: StudyConfig) -> tuple:
    """(tuning cells, final cells, lr selection, missing cell ids) of what has finished so far. An
    optimizer's lr is selected only once its whole grid has finished on that task (its seed cells
    cannot exist before); until then its cells count as missing."""
    tune = tuning_cells(study)
    done = {c["id"] for c in tune if cell_done(study, c)}
    grids = defaultdict(list)  # (task, optimizer) -> its tuning cells
    for c in tune:
        grids[c["task"], c["optimizer"]].append(c)
    complete = [key for key, grid in grids.items() if all(c["id"] in done for c in grid)]
    selection = select_lr(study, [c for key in complete for c in grids[key]])
    cells = final_cells(study, {k: v["lr"] for k, v in selection.items()})
    if study.tuning:  # without a selected lr a tuned optimizer's seed cells are not yet defined
        cells = [c for c in cells if c["group"] != "main" or (c["task"], c["optimizer"]) in selection]
    done |= {c["id"] for c in cells if cell_done(study, c)}
    if not done:
        raise ConfigError(f"no finished cells under {study.output_dir}/cells: nothing to report")
    missing = [c["id"] for c in tune + cells if c["id"] not in done]
    missing += [f"{t}-main-{o}: every seed (its lr grid has not finished)" for t, o in grids if (t, o) not in selection]
    return [c for c in tune if c["id"] in done], [c for c in cells if c["id"] in done], selection, missing
