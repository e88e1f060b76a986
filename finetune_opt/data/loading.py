"""Task data through `datasets`, as the task registry describes it: from a local directory in the
task's own layout, from the Hub, or (by-columns tasks) from the user's files or Hub dataset.

Every source comes out with the same schema: the task's text columns and "label" (int64 class ids,
or float32 regression targets), in splits "train", "eval" (and MNLI's "eval_mismatched"). Labels are
checked here, before any model is built (finetune_opt.data.labels).
"""

import os
from dataclasses import dataclass, field

import datasets

from finetune_opt.errors import ConfigError
from finetune_opt.data.labels import encode_labels
from finetune_opt.data.tables import read_table, read_utf8, table_from_dataset
from finetune_opt.tasks import CAUSAL_LM, REGRESSION, TASKS, Task, get_task

HUB_EVAL_SPLITS = ("validation", "dev", "test")  # a by-columns Hub dataset's eval split: the first present
# holdout_examples: the slice of train held out is drawn with this seed, not the run's, so every run
# of a study (any optimizer, lr or seed) is scored on the same examples.
HOLDOUT_SEED = 0


@dataclass
class TaskData:
    task: Task
    splits: datasets.DatasetDict
    text_columns: tuple
    label_names: tuple | None = None  # class names by id; None for regression and LM
    sources: dict = field(default_factory=dict)  # split -> its file or Hub split, for error messages

    @property
    def num_labels(self) -> int:
        return 1 if self.task.problem_type == REGRESSION else len(self.label_names)


def load_task(task_name: str, data, seed: int) -> TaskData:
    """The task's splits, from where the data section (config.schema.DataSection) says; subsets seeded
    with `seed` when train_examples / eval_examples are set. With holdout_examples, "eval" is that
    many examples held out of train and the dev files are not read."""
    task = get_task(task_name)
    if task.problem_type == CAUSAL_LM:
        splits, sources = _load_text(task, data.data_dir)
        loaded = TaskData(task, splits, task.text_columns, sources=sources)
    else:
        loaded = _load_labelled(task, data)
    if data.holdout_examples:
        loaded.splits = _hold_out(loaded.splits["train"], data.holdout_examples)
    for split in loaded.splits:
        n = data.train_examples if split == "train" else data.eval_examples
        if n is not None and n < len(loaded.splits[split]):
            loaded.splits[split] = loaded.splits[split].shuffle(seed=seed).select(range(n))
    return loaded


def _hold_out(train: datasets.Dataset, n: int) -> datasets.DatasetDict:
    if n >= len(train):
        raise ConfigError(f"holdout_examples={n} leaves nothing to train on: the train split has {len(train)} rows")
    shuffled = train.shuffle(seed=HOLDOUT_SEED)
    return datasets.DatasetDict(train=shuffled.select(range(n, len(train))), eval=shuffled.select(range(n)))


def _load_labelled(task, data) -> TaskData:
    text_columns = task.text_columns or tuple(data.text_columns)
    tables = _tables(task, data, text_columns, train_only=bool(data.holdout_examples))
    for split, table in tables.items():
        if not len(table):
            raise ConfigError(f"{table.source}: the {split} split has no rows")
    labels, names = encode_labels(task, tables)
    features = datasets.Features({**{c: datasets.Value("string") for c in text_columns},
                                  "label": datasets.Value("float32" if task.problem_type == REGRESSION else "int64")})
    splits = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({**{c: [str(v) for v in t.columns[c]] for c in text_columns},
                                           "label": labels[split]}, features=features)
        for split, t in tables.items()})
    return TaskData(task, splits, text_columns, names)


def _tables(task, data, text_columns, train_only=False) -> dict:
    """{split: Table} with our column names, from wherever this task's data is (train_only: the
    eval files and splits are not read)."""
    if task.by_columns:
        columns = {c: c for c in text_columns} | {data.label_column: "label"}
        if data.data_files:
            return {split: read_table(path, columns) for split, path in data.data_files.items()
                    if split == "train" or not train_only}
        return _hub_tables((data.dataset, data.dataset_config), {} if train_only else None, columns)
    if data.data_dir:
        return _local_tables(task, data.data_dir, train_only)
    columns = dict(task.hub_columns or {})
    columns |= {c: c for c in (*text_columns, "label") if c not in columns.values()}
    return _hub_tables(task.hub, {} if train_only else task.eval_splits, columns)


def _local_tables(task, data_dir, train_only=False) -> dict:
    if not os.path.isdir(data_dir):
        raise ConfigError(f"data dir {data_dir!r} does not exist")
    _refuse_another_tasks_dir(task, data_dir)
    local = task.local
    return {split: read_table(_local_file(data_dir, names), local.columns, names=local.names,
                              delimiter=local.delimiter, quoting=local.quoting)
            for split, names in local.files.items() if split == "train" or not train_only}


def _task_named_by(data_dir: str) -> str:
    """The task a folder is named for, as GLUE's download names them (RTE, SST-2, STS-B) or ours do."""
    return os.path.basename(os.path.realpath(data_dir)).lower().replace("-", "")


def _refuse_another_tasks_dir(task, data_dir: str):
    """GLUE's pair tasks share one layout, so another task's files read without an error: WNLI's
    as RTE's train with every label inverted (WNLI's id 1 is entailment, RTE's is not_entailment).
    A folder named for another task is taken for a mistake."""
    named = _task_named_by(data_dir)
    if named != task.name and named in TASKS:
        raise ConfigError(f"data dir {data_dir!r} is named for task {named}, not {task.name} (GLUE's tasks share "
                          f"layouts: its labels would be read as {task.name}'s); set task={named}, or data_dir "
                          f"to {task.name}'s files")


def _hub_tables(hub, eval_splits, columns) -> dict:
    """Hub splits as tables; eval_splits None: the dataset's first of HUB_EVAL_SPLITS ({}: train only)."""
    ds = _load_hub(hub)
    if eval_splits is None:
        present = [s for s in HUB_EVAL_SPLITS if s in ds]
        if not present:
            raise ConfigError(f"{hub[0]} has no eval split; found: {', '.join(ds)}; it needs one of: "
                              f"{', '.join(HUB_EVAL_SPLITS)}")
        eval_splits = {"eval": present[0]}
    name = "/".join(x for x in hub if x)
    return {ours: table_from_dataset(ds[theirs], f"{name} {theirs}", columns)
            for ours, theirs in {"train": "train", **eval_splits}.items()}


def _load_hub(hub):
    try:
        return datasets.load_dataset(*[x for x in hub if x])
    except Exception as e:  # offline, unknown name, ...: one line, not a traceback
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"cannot load {'/'.join(x for x in hub if x)} from the Hub ({type(e).__name__}: {first}); "
                          f"give data_dir=<local dir> or data_files") from None


def _local_file(data_dir: str, candidates: tuple) -> str:
    for name in candidates:
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    raise ConfigError(f"data dir {data_dir!r} has no {' or '.join(candidates)}")


def _load_text(task, data_dir) -> tuple[datasets.DatasetDict, dict]:
    """Raw text splits and where each came from; a local file is checked (UTF-8, not empty) first."""
    if data_dir:
        if not os.path.isdir(data_dir):
            raise ConfigError(f"data dir {data_dir!r} does not exist")
        _refuse_another_tasks_dir(task, data_dir)
        files = {split: _local_file(data_dir, names) for split, names in task.local.files.items()}
        for split, path in files.items():
            if not read_utf8(path).strip():
                raise ConfigError(f"{path}: the {split} split has no text")
        # keep_linebreaks: one <eos>-worth of structure per line, as the WikiText release has it.
        return datasets.load_dataset("text", data_files=files, keep_linebreaks=True), files
    ds = _load_hub(task.hub)
    names = {"train": "train", **task.eval_splits}
    return (datasets.DatasetDict({ours: ds[theirs] for ours, theirs in names.items()}),
            {ours: f"{'/'.join(task.hub)} {theirs}" for ours, theirs in names.items()})


def lm_blocks(data: TaskData, tokenizer, block_size: int, main_process_first) -> datasets.DatasetDict:
    """The run_clm recipe: every split tokenized, joined and cut into blocks of `block_size` tokens
    (input_ids = labels; each 2000-line chunk's ragged tail dropped). A split without one block is refused."""
    def tokens(batch) -> list[int]:
        return [t for line in tokenizer(batch["text"], add_special_tokens=False)["input_ids"] for t in line]

    def to_blocks(batch):
        ids = tokens(batch)
        n = len(ids) // block_size * block_size
        blocks = [ids[i:i + block_size] for i in range(0, n, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    with main_process_first():
        blocks = data.splits.map(to_blocks, batched=True, batch_size=2000, remove_columns=["text"])
    for split, d in blocks.items():
        if not len(d):
            n = len(tokens(data.splits[split][:]))
            raise ConfigError(f"{data.sources[split]}: the {split} split has {n} tokens, fewer than one block of "
                              f"max_length={block_size}; lower max_length")
    return blocks
