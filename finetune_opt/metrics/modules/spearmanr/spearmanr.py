"""Spearman rank correlation, as GLUE reports it for STS-B.

An `evaluate` metric module of finetune_opt: it runs offline (no Hub) and loads with
`evaluate.load(<this file or its folder>)`. Computed by
scipy.stats.spearmanr; the correlation of constant predictions is undefined: NaN.
"""

from scipy import stats

from finetune_opt.metrics.modules import score_metric  # (the module: evaluate.load takes the first Metric class it finds)


class Spearmanr(score_metric.ScoreMetric):
    key, inputs, returns = "spearmanr", score_metric.VALUES, "float in [-1, 1], or NaN"

    def score(self, predictions, references):
        return stats.spearmanr(predictions, references).statistic
