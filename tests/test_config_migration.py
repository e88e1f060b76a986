"""Results and checkpoints written before the configuration had sections (results.json schema 1,
a flat `config` block; a flat run_config.json) are still read: `compare` and studies read old
results, and an old checkpoint still resumes, compared field by field under the flat names."""

import json

import pytest

from finetune_opt.cli import main
from finetune_opt.config.run_config import RunConfig
from finetune_opt.errors import ConfigError
from finetune_opt.measure.config_block import flatten, nest
from finetune_opt.measure.results import SCHEMA_VERSION, load_results
from tests.bad_input_cases import BASE_VALUES, checkpoint_files
from tests.conftest import REPO

V1_RUN = REPO / "benchmarks/results/NVIDIA_H200/sst2/adamw"  # a committed results.json of schema 1


def test_compare_reads_a_version_1_results_file(tmp_path):
    assert json.loads((V1_RUN / "results.json").read_text())["schema_version"] == 1
    r = load_results(str(V1_RUN))
    assert r.schema_version == SCHEMA_VERSION and r.config["optimizer"]["name"] == "adamw"
    assert r.config["loop"]["max_steps"] == 300 and "betas" in r.config["optimizer"]
    assert flatten(r.config) == json.loads((V1_RUN / "results.json").read_text())["config"]
    assert main(["compare", str(V1_RUN), str(V1_RUN.parent / "lion"), "--out", str(tmp_path / "report")]) == 0
    assert "adamw" in (tmp_path / "report" / "report.md").read_text()


def test_a_version_1_checkpoint_config_resumes(tmp_path):
    """A checkpoint written before the sections holds a flat run_config.json: compared by flat names."""
    from finetune_opt.train.run_dir import resume_changes

    cfg = RunConfig(**BASE_VALUES(str(tmp_path)))
    flat = cfg.flat()
    assert nest(flat) == cfg.model_dump() and RunConfig(**flat) == cfg
    for rel, content in checkpoint_files(3, flat).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
    step = str(tmp_path / "run/checkpoints/step-0000003")
    assert resume_changes(cfg, step) == {}
    assert resume_changes(RunConfig(**{**BASE_VALUES(str(tmp_path)), "max_steps": 9}), step) == {"max_steps": [6, 9]}
    with pytest.raises(ConfigError, match=r"another config: lr \(5e-05 -> 0\.001\)"):
        resume_changes(RunConfig(**{**BASE_VALUES(str(tmp_path)), "lr": 1e-3}), step)
