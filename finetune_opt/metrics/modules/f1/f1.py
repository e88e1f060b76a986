"""F1 of class 1: binary F1 of the positive class, as GLUE reports it for MRPC and QQP.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by scikit-learn's
f1_score(average='binary', pos_label=1); 0 when class 1 is neither predicted nor present.
"""

from sklearn import metrics

from finetune_opt.metrics.modules import score_metric  # (the module: evaluate.load takes the first Metric class it finds)


class F1(score_metric.ScoreMetric):
    key, inputs, returns = "f1", score_metric.CLASS_IDS, "float in [0, 1]"

    def score(self, predictions, references):
        return metrics.f1_score(references, predictions, average="binary", pos_label=1, zero_division=0.0)
