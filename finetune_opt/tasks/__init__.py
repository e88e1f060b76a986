"""The task registry: everything the toolkit knows about a task, in one place.

Config validation, the recipes, the data loader, `compare` and `study` read task facts from here
and nowhere else. One module per task family; adding a task is one entry in its family's TASKS.
"""

import os

from finetune_opt.errors import ConfigError, one_of
from finetune_opt.tasks import glue, instruction, language_modelling, text_classification
from finetune_opt.tasks.base import (CAUSAL_LM, CLASSIFICATION, INSTRUCTION_SFT, RECIPES, REGRESSION, LocalFiles,
                                     Task, check_format, recipe_module)

TASKS = {t.name: t for family in (glue, text_classification, language_modelling, instruction) for t in family.TASKS}

__all__ = ["CAUSAL_LM", "CLASSIFICATION", "INSTRUCTION_SFT", "RECIPES", "REGRESSION", "TASKS", "LocalFiles", "Task",
           "get_task", "check_recipe", "check_task_fields", "recipe_module"]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise one_of("task", name, TASKS)
    return TASKS[name]


def check_recipe(name: str, script: str) -> Task:
    """The task, if `script` (e.g. "finetune_glue.py") is the recipe that runs it."""
    accepted = [t for t, task in TASKS.items() if script in task.recipes.values()]
    if name not in accepted:
        raise one_of("task for this recipe", name, accepted)
    return TASKS[name]


def check_task_fields(task: Task, data) -> None:
    """The by-columns fields are given exactly when the task takes its data by columns; so is `metric`
    (the other tasks report their official metrics). `data`: the config's data section."""
    if data.metric is not None and not task.by_columns:
        raise ConfigError(f"metric is for task=text_classification or text_regression; task {task.name!r} "
                          f"has fixed metrics (set metric=null)")
    if task.problem_type == INSTRUCTION_SFT:  # dataset= is its too; finetune_opt.config.sft checks the rest
        return
    given = [f for f in ("data_files", "dataset", "text_columns", "label_column") if getattr(data, f) is not None]
    if not task.by_columns:
        if given:
            raise ConfigError(f"{given[0]} is for task=text_classification or text_regression; "
                              f"task {task.name!r} has fixed columns (set {given[0]}=null)")
        return
    if (data.data_files is None) == (data.dataset is None):
        raise ConfigError(f"task {task.name!r} needs exactly one of data_files={{train: FILE, eval: FILE}} "
                          f"or dataset=<Hub name>")
    if data.data_dir is not None:
        raise ConfigError(f"task {task.name!r} takes data_files or dataset, not data_dir")
    if data.data_files is not None:
        _check_data_files(data.data_files)
    if not (isinstance(data.text_columns, list) and 1 <= len(data.text_columns) <= 2
            and all(isinstance(c, str) for c in data.text_columns)):
        raise ConfigError(f"text_columns must be a list of one or two column names, got {data.text_columns!r}")
    if not isinstance(data.label_column, str):
        raise ConfigError(f"label_column must be a column name, got {data.label_column!r}")
    if data.label_column in data.text_columns:  # the text would be the label: a class per sentence
        raise ConfigError(f"label_column {data.label_column!r} is also in text_columns; the label needs a column "
                          f"of its own")
    if "label" in data.text_columns:  # inside, the label column goes by that name: the two would be one list
        raise ConfigError(f"text_columns cannot hold a column named 'label' while label_column is "
                          f"{data.label_column!r}; rename that column in the data files")
    if data.metric is not None:  # every module loads and scores, now: not after training
        from finetune_opt.metrics.loading import check_metrics

        check_metrics(data.metric, "regression" if task.problem_type == REGRESSION else "classification")


def _check_data_files(data_files):
    if not isinstance(data_files, dict) or set(data_files) != {"train", "eval"}:
        raise ConfigError(f"data_files must be {{train: FILE, eval: FILE}}, got {data_files!r}")
    for path in data_files.values():
        if not os.path.isfile(str(path)):
            raise ConfigError(f"data file {path!r} does not exist")
        check_format(path)
