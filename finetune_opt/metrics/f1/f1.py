"""Binary F1 of the positive class (label 1), as GLUE reports it for MRPC."""

import datasets
import evaluate
import numpy as np


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions, references: lists of 0/1 labels",
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        tp = int(((predictions == 1) & (references == 1)).sum())
        fp = int(((predictions == 1) & (references == 0)).sum())
        fn = int(((predictions == 0) & (references == 1)).sum())
        return {"f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0}
