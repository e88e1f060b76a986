"""F1 of class 1: binary F1 of the positive class, as GLUE reports it for MRPC and QQP.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by scikit-learn's
f1_score(average='binary', pos_label=1); 0 when class 1 is neither predicted nor present.
"""

import datasets
import evaluate
from sklearn import metrics

_DESCRIPTION = "F1 of class 1: binary F1 of the positive class, as GLUE reports it for MRPC and QQP."
_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (int)
    references: class ids (int)
Returns:
    f1: float in [0, 1]
"""
_CITATION = "Wang et al. 2018, GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding"


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        return {"f1": float(metrics.f1_score(references, predictions, average="binary", pos_label=1,
                                               zero_division=0.0))}
