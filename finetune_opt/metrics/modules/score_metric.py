"""What every packaged metric module shares: an `evaluate.Metric` that scores 1-D predictions against
references and returns one float under its own name. A module names its key, its input type and
range, and its `score`; its docstring's first line is its description."""

import sys
import warnings

import datasets
import evaluate
from scipy import stats

CLASS_IDS, VALUES = ("int64", "class ids (int)"), ("float64", "values (float)")
CITATION = "Wang et al. 2018, GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding"


class ScoreMetric(evaluate.Metric):
    key: str
    inputs: tuple = CLASS_IDS  # (feature dtype, how the arguments are described)
    returns: str = "float"

    def _info(self):
        dtype, described = self.inputs
        return evaluate.MetricInfo(
            description=sys.modules[type(self).__module__].__doc__.splitlines()[0], citation=CITATION,
            inputs_description=f"Args:\n    predictions: predicted {described}\n    references: reference "
                               f"{described}\nReturns:\n    {self.key}: {self.returns}\n",
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}))

    def _compute(self, predictions, references):
        with warnings.catch_warnings():  # constant input to a correlation: NaN is the answer, the warning noise
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            return {self.key: float(self.score(predictions, references))}

    def score(self, predictions, references) -> float:
        raise NotImplementedError
