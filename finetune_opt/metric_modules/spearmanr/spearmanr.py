"""Spearman rank correlation, as GLUE reports it for STS-B.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by
scipy.stats.spearmanr; the correlation of constant predictions is undefined: NaN.
"""

import warnings

import datasets
import evaluate
from scipy import stats

_DESCRIPTION = "Spearman rank correlation, as GLUE reports it for STS-B."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted values (float)
    references: target values (float)
Returns:
    spearmanr: float in [-1, 1], or NaN
"""
_CITATION = "Wang et al. 2018, GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding"


class Spearmanr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}))

    def _compute(self, predictions, references):
        with warnings.catch_warnings():  # constant input: NaN is the answer, the warning is noise
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            return {"spearmanr": float(stats.spearmanr(predictions, references).statistic)}
