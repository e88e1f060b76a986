"""Accuracy: the fraction of predictions equal to their reference.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by scikit-learn's accuracy_score.
"""

import datasets
import evaluate
from sklearn import metrics

_DESCRIPTION = "Accuracy: the fraction of predictions equal to their reference."
_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (int)
    references: class ids (int)
Returns:
    accuracy: float in [0, 1]
"""
_CITATION = ""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        return {"accuracy": float(metrics.accuracy_score(references, predictions))}
