"""Matthews correlation coefficient, as GLUE reports it for CoLA.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by scikit-learn's
matthews_corrcoef; 0 for a constant classifier (scikit-learn's and GLUE's convention).
"""

import datasets
import evaluate
from sklearn import metrics

_DESCRIPTION = "Matthews correlation coefficient, as GLUE reports it for CoLA."
_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (int)
    references: class ids (int)
Returns:
    matthews_correlation: float in [-1, 1]
"""
_CITATION = "Wang et al. 2018, GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding"


class MatthewsCorrelation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        return {"matthews_correlation": float(metrics.matthews_corrcoef(references, predictions))}
