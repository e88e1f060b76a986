"""Accuracy: the fraction of predictions equal to their reference.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by scikit-learn's accuracy_score.
"""

from sklearn import metrics

from finetune_opt.metrics.modules import score_metric  # (the module: evaluate.load takes the first Metric class it finds)


class Accuracy(score_metric.ScoreMetric):
    key, inputs, returns = "accuracy", score_metric.CLASS_IDS, "float in [0, 1]"

    def score(self, predictions, references):
        return metrics.accuracy_score(references, predictions)
