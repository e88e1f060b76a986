"""Macro F1: the unweighted mean of each class's F1.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by scikit-learn's
f1_score(average='macro'); a class neither predicted nor present scores 0.
"""

import datasets
import evaluate
from sklearn import metrics

_DESCRIPTION = "Macro F1: the unweighted mean of each class's F1."
_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (int)
    references: class ids (int)
Returns:
    macro_f1: float in [0, 1]
"""
_CITATION = ""


class MacroF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        return {"macro_f1": float(metrics.f1_score(references, predictions, average="macro", zero_division=0.0))}
