"""Mean squared error.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by scikit-learn's mean_squared_error.
"""

from sklearn import metrics

from finetune_opt.metrics.modules import score_metric  # (the module: evaluate.load takes the first Metric class it finds)


class MSE(score_metric.ScoreMetric):
    key, inputs, returns = "mse", score_metric.VALUES, "float >= 0"

    def score(self, predictions, references):
        return metrics.mean_squared_error(references, predictions)
