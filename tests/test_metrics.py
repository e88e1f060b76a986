"""Task metrics: hand-computed cases, and equality with scikit-learn / scipy on random data, through
the same code path the recipes use (logits -> predictions -> the task's metrics)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from finetune_opt.classification import task_metrics
from finetune_opt.metrics import METRICS, compute_metrics
from finetune_opt.tasks import CLASSIFICATION, REGRESSION, TASKS

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


def test_every_task_metric_is_implemented():
    for task in LABELLED:
        assert set(task.metrics) <= set(METRICS) and task.headline in task.metrics, task.name
