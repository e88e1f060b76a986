"""Mean squared error.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by scikit-learn's mean_squared_error.
"""

import datasets
import evaluate
from sklearn import metrics

_DESCRIPTION = "Mean squared error."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted values (float)
    references: target values (float)
Returns:
    mse: float >= 0
"""
_CITATION = ""


class MSE(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}))

    def _compute(self, predictions, references):
        return {"mse": float(metrics.mean_squared_error(references, predictions))}
