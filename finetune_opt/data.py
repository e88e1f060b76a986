"""Task data through `datasets`: from the Hub by name, or from a local directory.

Local layouts (what GLUE's download script and the WikiText release produce):
  sst2/  train.tsv, dev.tsv   columns sentence, label
  mrpc/  train.tsv, dev.tsv   columns Quality, #1 String, #2 String (UTF-8 BOM, unquoted)
  wikitext2/ train.txt, valid.txt (or wiki.train.tokens, wiki.valid.tokens)
Both sources come out with the Hub's column names, so the rest of the code sees one schema.
"""

import csv
import os
from dataclasses import dataclass

import datasets

from finetune_opt.errors import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    hub: tuple              # load_dataset(*hub)
    splits: tuple           # (train, eval) split names on the Hub
    files: tuple            # local file names per split (first existing wins)
    text_columns: tuple     # Hub column names fed to the tokenizer
    local_columns: dict     # local column -> Hub column
    metrics: tuple = ()


TASKS = {
    "sst2": TaskSpec(("nyu-mll/glue", "sst2"), ("train", "validation"), (("train.tsv",), ("dev.tsv",)),
                     ("sentence",), {"sentence": "sentence", "label": "label"}, ("accuracy",)),
    "mrpc": TaskSpec(("nyu-mll/glue", "mrpc"), ("train", "validation"), (("train.tsv",), ("dev.tsv",)),
                     ("sentence1", "sentence2"),
                     {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"}, ("accuracy", "f1")),
    "wikitext2": TaskSpec(("Salesforce/wikitext", "wikitext-2-v1"), ("train", "validation"),
                          (("train.txt", "wiki.train.tokens"), ("valid.txt", "wiki.valid.tokens")),
                          ("text",), {"text": "text"}),
}


def _local_file(data_dir: str, candidates: tuple) -> str:
    for name in candidates:
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    raise ConfigError(f"data dir {data_dir!r} has no {' or '.join(candidates)}")


def _load_local(spec: TaskSpec, data_dir: str) -> datasets.DatasetDict:
    if not os.path.isdir(data_dir):
        raise ConfigError(f"data dir {data_dir!r} does not exist")
    files = {split: _local_file(data_dir, names) for split, names in zip(("train", "eval"), spec.files)}
    if spec.text_columns == ("text",):
        # keep_linebreaks: one <eos>-worth of structure per line, as the WikiText release has it.
        return datasets.load_dataset("text", data_files=files, keep_linebreaks=True)
    # GLUE TSVs are unquoted (sentences contain ") and MRPC starts with a BOM.
    ds = datasets.load_dataset("csv", data_files=files, delimiter="\t", quoting=csv.QUOTE_NONE,
                               encoding="utf-8-sig", keep_default_na=False)
    for split, d in ds.items():
        missing = [c for c in spec.local_columns if c not in d.column_names]
        if missing:
            raise ConfigError(f"{files[split]} has no column {missing[0]!r}; found: {', '.join(d.column_names)}")
    ds = ds.select_columns(list(spec.local_columns)).rename_columns(
        {k: v for k, v in spec.local_columns.items() if k != v})
    return ds.cast_column("label", datasets.Value("int64"))


def load_task(task: str, data_dir: str | None, train_examples=None, eval_examples=None, seed=0):
    """{"train", "eval"} datasets with the Hub's columns; seeded subsets when sizes are given."""
    spec = TASKS[task]
    if data_dir:
        ds = _load_local(spec, data_dir)
    else:
        try:
            hub = datasets.load_dataset(*spec.hub)
        except Exception as e:  # offline, unknown name, ...: one line, not a traceback
            raise ConfigError(f"cannot load {'/'.join(spec.hub)} from the Hub ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); give data_dir=<local dir>") from None
        ds = datasets.DatasetDict({"train": hub[spec.splits[0]], "eval": hub[spec.splits[1]]})
    for split, n in (("train", train_examples), ("eval", eval_examples)):
        if n is not None and n < len(ds[split]):
            ds[split] = ds[split].shuffle(seed=seed).select(range(n))
    return ds
