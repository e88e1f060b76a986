"""Any labelled text dataset, named by its columns: the user gives `data_files` (CSV, TSV, JSON,
JSONL) or a Hub `dataset` (+ `dataset_config`), `text_columns` and `label_column`.

Classification counts its classes in the training data and keeps their names (stored in the model
config's id2label); regression reads the label as a float target.
"""

from finetune_opt.tasks.base import CLASSIFICATION, REGRESSION, Task

TASKS = (
    Task(name="text_classification", problem_type=CLASSIFICATION, text_columns=(), by_columns=True,
         metrics=("accuracy", "macro_f1"), headline="accuracy"),
    Task(name="text_regression", problem_type=REGRESSION, text_columns=(), by_columns=True,
         metrics=("pearson", "spearmanr", "mse"), headline="spearmanr"),
)
