"""The nine GLUE tasks (Wang et al. 2018) with the metrics GLUE reports.

Each loads from the Hub (nyu-mll/glue, <task>) or from a directory in the layout of GLUE's own
download (train.tsv, dev.tsv; MNLI: dev_matched.tsv, dev_mismatched.tsv). Column and label names are
the Hub's; local files are renamed to them. Adding a GLUE-like task is one `glue(...)` line.
"""

from finetune_opt.tasks.base import CLASSIFICATION, REGRESSION, LocalFiles, Task

ENTAILMENT = ("entailment", "not_entailment")


def glue(name, text_columns, label_names, metrics=("accuracy",), headline=None, *, file_columns=None,
         names=None, dev_files=None, hub=None, hub_columns=None) -> Task:
    """A GLUE-like task; label_names None means regression. `file_columns`: TSV column -> our column
    where they differ; `names`: the columns by position for a file without a header (CoLA);
    `dev_files`: our eval split -> (Hub split, TSV file); `hub`: not nyu-mll/glue; `hub_columns`:
    Hub column -> our column where they differ."""
    dev_files = dev_files or {"eval": ("validation", "dev.tsv")}
    columns = dict(file_columns or {})
    columns |= {c: c for c in (*text_columns, "label") if c not in columns.values()}
    local = LocalFiles(files={"train": ("train.tsv",), **{s: (f,) for s, (_, f) in dev_files.items()}},
                       columns=columns, names=names)
    return Task(name=name, problem_type=REGRESSION if label_names is None else CLASSIFICATION,
                text_columns=tuple(text_columns), metrics=tuple(metrics), headline=headline or metrics[0],
                label_names=label_names, hub=hub or ("nyu-mll/glue", name), hub_columns=hub_columns,
                eval_splits={s: hub_split for s, (hub_split, _) in dev_files.items()}, local=local)


TASKS = (
    glue("cola", ["sentence"], ("unacceptable", "acceptable"), ["matthews_correlation"],
         names=("source", "label", "mark", "sentence")),
    glue("sst2", ["sentence"], ("negative", "positive")),
    glue("mrpc", ["sentence1", "sentence2"], ("not_equivalent", "equivalent"), ["accuracy", "f1"],
         file_columns={"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"}),
    glue("qqp", ["question1", "question2"], ("not_duplicate", "duplicate"), ["accuracy", "f1"],
         file_columns={"is_duplicate": "label"}),
    glue("stsb", ["sentence1", "sentence2"], None, ["pearson", "spearmanr"], headline="spearmanr",
         file_columns={"score": "label"}),
    glue("mnli", ["premise", "hypothesis"], ("entailment", "neutral", "contradiction"),
         file_columns={"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
         dev_files={"eval": ("validation_matched", "dev_matched.tsv"),
                    "eval_mismatched": ("validation_mismatched", "dev_mismatched.tsv")}),
    glue("qnli", ["question", "sentence"], ENTAILMENT),
    glue("rte", ["sentence1", "sentence2"], ENTAILMENT),
    glue("wnli", ["sentence1", "sentence2"], ("not_entailment", "entailment")),
)
