"""Instruction data for supervised fine-tuning of causal LMs: load by columns, format prompts,
tokenize with the loss on the response only.

Sources (first that applies):
  data_dir=<file>   one JSON / JSONL / CSV file: train; the eval split is held out from it (seeded)
  data_dir=<dir>    train.{jsonl,json,csv} and test / validation / eval.{jsonl,json,csv} (else held out)
  dataset=<name>    a Hub dataset (dataset_config for its config), splits train and test / validation
Tasks: `gsm8k` (columns question / answer, Hub openai/gsm8k main) and `instruct` (any dataset; the
columns come from the config: prompt_column, response_column, optionally input_column as in Alpaca).

An example becomes  prompt_ids + response_ids  with labels  [-100] * len(prompt_ids) + response_ids.
The prompt is the tokenizer's chat template when it has one (user turn + generation prompt; the
response is what the template adds for the assistant turn, end-of-turn token included), else
`prompt_template` with {prompt} (default: the task's), BOS before and EOS after the response.
"""

import os
from dataclasses import dataclass, field

import datasets

from finetune_opt.errors import ConfigError
from finetune_opt.data.tables import read_utf8

EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv"}
EVAL_SPLIT_NAMES = ("test", "validation", "eval", "dev")
DEFAULT_TEMPLATE = "### Question:\n{prompt}\n\n### Answer:\n"
HELD_OUT_FRACTION = 0.05  # eval share of a dataset that ships only one split


@dataclass(frozen=True)
class InstructTask:
    hub: tuple = ()                  # load_dataset(*hub) when neither data_dir nor dataset is given
    prompt_column: str | None = None
    response_column: str | None = None
    input_column: str | None = None
    metric: str | None = None        # downstream metric by generation (finetune_opt.train.sft_eval.GENERATION_METRICS)
    template: str = DEFAULT_TEMPLATE  # the prompt when no chat template is used


INSTRUCT_TASKS = {
    "gsm8k": InstructTask(("openai/gsm8k", "main"), "question", "answer", metric="gsm8k"),
    "instruct": InstructTask(template="### Instruction:\n{prompt}\n\n### Response:\n"),  # Alpaca's
}


@dataclass
class Columns:
    prompt: str
    response: str
    input: str | None = None

    @classmethod
    def from_config(cls, task_name: str, sft) -> "Columns":
        """The columns the SFT section (config.schema.SftSection) names, else the task's."""
        task = INSTRUCT_TASKS[task_name]
        prompt, response = sft.prompt_column or task.prompt_column, sft.response_column or task.response_column
        if not prompt or not response:
            raise ConfigError(f"task {task_name} needs prompt_column and response_column "
                              f"(e.g. prompt_column=instruction response_column=output)")
        return cls(prompt, response, sft.input_column or task.input_column)

    def required(self) -> list[str]:
        return [c for c in (self.prompt, self.input, self.response) if c]


# ---- loading ---------------------------------------------------------------------------------

def _data_file(directory: str, stems: tuple) -> str | None:
    for stem in stems:
        for ext in EXTENSIONS:
            if os.path.isfile(os.path.join(directory, stem + ext)):
                return os.path.join(directory, stem + ext)
    return None


def _load_files(files: dict) -> datasets.DatasetDict:
    kinds = {EXTENSIONS.get(os.path.splitext(p)[1]) for p in files.values()}
    if None in kinds or len(kinds) != 1:
        raise ConfigError(f"instruction data must be .jsonl, .json or .csv files (one kind), got "
                          f"{', '.join(files.values())}")
    kind = kinds.pop()
    for path in files.values():
        read_utf8(path)  # a non-UTF-8 byte: its file and line, not the JSON / CSV reader's traceback
    extra = {"keep_default_na": False} if kind == "csv" else {}  # an empty CSV cell stays "", not NaN
    try:
        return datasets.load_dataset(kind, data_files=files, **extra)
    except Exception as e:  # malformed JSON/CSV: one line, not a traceback
        raise ConfigError(f"cannot read {', '.join(files.values())}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None


def _load_local(path: str) -> datasets.DatasetDict:
    if os.path.isfile(path):
        return _load_files({"train": path})
    if not os.path.isdir(path):
        raise ConfigError(f"data dir {path!r} does not exist")
    train = _data_file(path, ("train",))
    if train is None:
        raise ConfigError(f"data dir {path!r} has no train.jsonl, train.json or train.csv")
    held_out = _data_file(path, EVAL_SPLIT_NAMES)
    return _load_files({"train": train, **({"eval": held_out} if held_out else {})})


def _load_hub(name_and_config: tuple) -> datasets.DatasetDict:
    name_and_config = tuple(x for x in name_and_config if x)
    try:
        hub = datasets.load_dataset(*name_and_config)
    except Exception as e:  # offline, unknown name, ...
        raise ConfigError(f"cannot load {'/'.join(name_and_config)} from the Hub ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); give data_dir=<local file or dir>") from None
    held_out = next((s for s in EVAL_SPLIT_NAMES if s in hub), None)
    return datasets.DatasetDict({"train": hub["train"], **({"eval": hub[held_out]} if held_out else {})})


def load_instruct(task_name: str, data, columns: Columns, seed: int) -> datasets.DatasetDict:
    """{"train", "eval"} with the raw columns, checked, from where the data section (config.schema.
    DataSection) says; subsets seeded with `seed` when sizes are given."""
    if data.data_dir:
        ds = _load_local(data.data_dir)
    elif data.dataset or INSTRUCT_TASKS[task_name].hub:
        ds = _load_hub((data.dataset, data.dataset_config) if data.dataset else INSTRUCT_TASKS[task_name].hub)
    else:
        raise ConfigError("task instruct needs data_dir=<file or dir> or dataset=<Hub name>")
    for split, d in ds.items():
        missing = [c for c in columns.required() if c not in d.column_names]
        if missing:
            raise ConfigError(f"{split} data has no column {missing[0]!r}; found: {', '.join(d.column_names)}")
    if "eval" not in ds:  # hold out a seeded slice of train
        if (data.eval_examples or 0) >= len(ds["train"]):
            raise ConfigError(f"eval_examples={data.eval_examples} leaves nothing to train on: the data has "
                              f"{len(ds['train'])} examples and no eval split")
        parts = ds["train"].train_test_split(test_size=data.eval_examples or HELD_OUT_FRACTION, seed=seed)
        ds = datasets.DatasetDict({"train": parts["train"], "eval": parts["test"]})
    for split, n in (("train", data.train_examples), ("eval", data.eval_examples)):
        if n is not None and n < len(ds[split]):
            ds[split] = ds[split].shuffle(seed=seed).select(range(n))
    return ds


# ---- formatting and tokenization -------------------------------------------------------------

def prompt_text(row: dict, columns: Columns) -> str:
    """The user's turn: the prompt column, plus the input column when it is non-empty (Alpaca)."""
    text = str(row[columns.prompt])
    extra = row.get(columns.input) if columns.input else None
    return f"{text}\n\n{extra}" if extra else text


@dataclass
class PromptFormat:
    """Turns (prompt, response) text into token ids; one instance per tokenizer and config."""
    tokenizer: object
    template: str = DEFAULT_TEMPLATE
    use_chat_template: bool = False
    end_id: int | None = field(init=False, default=None)

    def __post_init__(self):
        self.end_id = self.tokenizer.eos_token_id
        if self.end_id is None:  # WordPiece (BERT-style) tokenizers end a text with [SEP]
            self.end_id = self.tokenizer.sep_token_id

    def _chat(self, prompt: str, response: str | None) -> tuple[str, str]:
        user = [{"role": "user", "content": prompt}]
        head = self.tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        if response is None:
            return head, ""
        full = self.tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(head):  # templates that rewrite earlier turns cannot be split this way
            raise ConfigError("the tokenizer's chat template does not render the prompt as a prefix of "
                              "prompt + response; set use_chat_template=false")
        return head, full[len(head):]

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.use_chat_template:
            return self.tokenizer(self._chat(prompt, None)[0], add_special_tokens=False)["input_ids"]
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self.tokenizer(self.template.replace("{prompt}", prompt), add_special_tokens=False)["input_ids"]

    def response_ids(self, prompt: str, response: str) -> list[int]:
        if self.use_chat_template:  # the template's own end-of-turn marker ends the response
            return self.tokenizer(self._chat(prompt, response)[1], add_special_tokens=False)["input_ids"]
        end = [self.end_id] if self.end_id is not None else []
        return self.tokenizer(response, add_special_tokens=False)["input_ids"] + end


def make_prompt_format(tokenizer, task_name: str, sft) -> PromptFormat:
    """The prompt format the SFT section (config.schema.SftSection) asks for, else the task's."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    use_chat = has_chat if sft.use_chat_template is None else sft.use_chat_template
    if use_chat and not has_chat:
        raise ConfigError("use_chat_template=true but the tokenizer has no chat template")
    return PromptFormat(tokenizer, sft.prompt_template or INSTRUCT_TASKS[task_name].template, use_chat)


def encode_example(fmt: PromptFormat, prompt: str, response: str, max_length: int) -> dict:
    """input_ids, labels (prompt masked with -100) and what happened: ok / truncated / too_long / empty."""
    if not response.strip():
        return {"input_ids": [], "labels": [], "status": "empty"}
    head = fmt.prompt_ids(prompt)
    if len(head) >= max_length:  # not one response token would fit
        return {"input_ids": [], "labels": [], "status": "too_long"}
    tail = fmt.response_ids(prompt, response)
    status = "truncated" if len(head) + len(tail) > max_length else "ok"
    tail = tail[:max_length - len(head)]
    return {"input_ids": head + tail, "labels": [-100] * len(head) + tail, "status": status}


def _encode_split(split, fmt: PromptFormat, columns: Columns, max_length: int):
    def encode(row):
        response = row[columns.response]
        return encode_example(fmt, prompt_text(row, columns), "" if response is None else str(response), max_length)

    return split.map(encode, remove_columns=split.column_names)


def tokenize_instruct(ds: datasets.DatasetDict, fmt: PromptFormat, columns: Columns, max_length: int,
                      main_process_first) -> tuple[datasets.DatasetDict, dict]:
    """Tokenized splits (unusable examples dropped) and, per split, how many examples were kept,
    truncated (response cut at max_length), dropped for an empty response or a prompt that fills
    max_length. All unusable: ConfigError."""
    report, out = {}, datasets.DatasetDict()
    with main_process_first():  # the others read its cache
        for name, split in ds.items():
            encoded = _encode_split(split, fmt, columns, max_length)
            statuses = encoded["status"]
            counts = {s: statuses.count(s) for s in ("ok", "truncated", "too_long", "empty")}
            if counts["ok"] + counts["truncated"] == 0:
                raise ConfigError(f"no usable {name} example: {counts['too_long']} have a prompt of >= "
                                  f"max_length={max_length} tokens, {counts['empty']} an empty {columns.response!r}")
            report[name] = {"examples": len(statuses), "kept": counts["ok"] + counts["truncated"],
                            "truncated": counts["truncated"], "dropped_prompt_too_long": counts["too_long"],
                            "dropped_empty_response": counts["empty"]}
            out[name] = encoded.filter(lambda s: s in ("ok", "truncated"), input_columns="status")
            out[name] = out[name].remove_columns("status")
    return out, report
