"""Macro F1: the unweighted mean of each class's F1.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by scikit-learn's
f1_score(average='macro'); a class neither predicted nor present scores 0.
"""

from sklearn import metrics

from finetune_opt.metrics.modules import score_metric  # (the module: evaluate.load takes the first Metric class it finds)


class MacroF1(score_metric.ScoreMetric):
    key, inputs, returns = "macro_f1", score_metric.CLASS_IDS, "float in [0, 1]"

    def score(self, predictions, references):
        return metrics.f1_score(references, predictions, average="macro", zero_division=0.0)
