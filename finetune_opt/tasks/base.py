"""What a task is: the facts every other module reads (loading, columns, labels, metrics, ranking)."""

import csv
import math
import os
from dataclasses import dataclass, field

from finetune_opt.errors import one_of

CLASSIFICATION = "single_label_classification"  # the names transformers' config.problem_type uses
REGRESSION = "regression"
CAUSAL_LM = "causal_lm"
INSTRUCTION_SFT = "instruction_sft"  # a causal LM trained on prompt -> response (finetune_opt.data.instructions)

# The file formats a task's data files may have: extension -> delimiter (finetune_opt.data.tables reads them)
FORMATS = {".csv": ",", ".tsv": "\t", ".json": None, ".jsonl": None}


def check_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise one_of(f"data file format (of {path})", ext or "(no extension)", list(FORMATS))
    return ext


def recipe_module(script: str) -> str:
    """"finetune_glue.py" -> "finetune_opt.recipes.finetune_glue" (a task names its recipe by file name)."""
    return f"finetune_opt.recipes.{script.removesuffix('.py')}"


# Which recipe runs a task, per engine: a fact of the problem type, so one entry per family.
RECIPES = {
    CLASSIFICATION: {"accelerate": "finetune_glue.py", "trainer": "trainer_glue.py"},
    REGRESSION: {"accelerate": "finetune_glue.py", "trainer": "trainer_glue.py"},
    CAUSAL_LM: {"accelerate": "finetune_lm.py"},
    INSTRUCTION_SFT: {"accelerate": "finetune_sft.py"},
}


@dataclass(frozen=True)
class LocalFiles:
    """A task's files in a local directory (the layout its official release has)."""
    files: dict                    # split -> candidate file names (first existing wins)
    columns: dict                  # column in the file -> our column name
    names: tuple | None = None     # None: the first row is the header; else the columns by position
    delimiter: str = "\t"
    quoting: int = csv.QUOTE_NONE  # GLUE TSVs are unquoted and their sentences contain "


@dataclass(frozen=True)
class Task:
    name: str
    problem_type: str
    text_columns: tuple                # fed to the tokenizer, in order (one text or a pair)
    metrics: tuple = ()                # official metrics (packaged evaluate modules), per eval split
    headline: str = "accuracy"         # the metric runs are ranked by
    higher_is_better: bool = True
    label_names: tuple | None = None   # class ids in order; files may hold the names or the ids
    hub: tuple | None = None           # datasets.load_dataset(*hub)
    hub_columns: dict | None = None    # Hub column -> our column where they differ
    eval_splits: dict = field(default_factory=lambda: {"eval": "validation"})  # our split -> Hub split
    local: LocalFiles | None = None
    by_columns: bool = False           # the user names data_files/dataset, text_columns, label_column

    @property
    def num_labels(self) -> int | None:
        """Fixed by the task, or None: counted from the training data."""
        if self.problem_type == REGRESSION:
            return 1
        return len(self.label_names) if self.label_names else None

    @property
    def recipes(self) -> dict:
        return RECIPES[self.problem_type]

    def rank_key(self, value: float) -> tuple:
        """Sort key: the best headline value first, in the task's direction; NaN (undefined) last."""
        if value is None or math.isnan(value):
            return (1, 0.0)
        return (0, -value if self.higher_is_better else value)
