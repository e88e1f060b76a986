"""Task metrics, computed by scikit-learn and scipy (well-kept, tested implementations; no Hub).

Names and definitions are GLUE's: F1 is binary F1 of the positive class (label 1), as GLUE reports it
for MRPC and QQP; Matthews correlation for CoLA; Pearson and Spearman correlation for STS-B.
A correlation of constant predictions is undefined: it is reported as NaN, not as a number.
"""

import warnings

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def _correlation(fn):
    def compute(predictions, references):
        with warnings.catch_warnings():  # constant input: NaN is the answer, the warning is noise
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            return float(fn(predictions, references).statistic)
    return compute


METRICS = {
    "accuracy": lambda p, r: float(skm.accuracy_score(r, p)),
    "f1": lambda p, r: float(skm.f1_score(r, p, average="binary", pos_label=1, zero_division=0.0)),
    "macro_f1": lambda p, r: float(skm.f1_score(r, p, average="macro", zero_division=0.0)),
    "matthews_correlation": lambda p, r: float(skm.matthews_corrcoef(r, p)),
    "pearson": _correlation(stats.pearsonr),
    "spearmanr": _correlation(stats.spearmanr),
    "mse": lambda p, r: float(skm.mean_squared_error(r, p)),
}


def compute_metrics(names, predictions, references) -> dict:
    """{name: value} for the metric names, on 1-D arrays (class ids, or regression outputs)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    return {name: METRICS[name](predictions, references) for name in names}
