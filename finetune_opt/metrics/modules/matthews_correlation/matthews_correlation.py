"""Matthews correlation coefficient, as GLUE reports it for CoLA.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by scikit-learn's
matthews_corrcoef; 0 for a constant classifier (scikit-learn's and GLUE's convention).
"""

from sklearn import metrics

from finetune_opt.metrics.modules import score_metric  # (the module: evaluate.load takes the first Metric class it finds)


class MatthewsCorrelation(score_metric.ScoreMetric):
    key, inputs, returns = "matthews_correlation", score_metric.CLASS_IDS, "float in [-1, 1]"

    def score(self, predictions, references):
        return metrics.matthews_corrcoef(references, predictions)
