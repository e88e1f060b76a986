"""Run configuration: the task and its sections (finetune_opt.config.schema) -> a validated `RunConfig`.

Everything a recipe does is in this one object, so a results file's `config` block is enough to
reproduce a run. Validation happens here, before any data, model or output is touched: each
section by its own model, then the rules that span sections. `RunConfig(task=..., max_steps=3)`
takes flat keyword arguments as well as sections (finetune_opt.config.keys)."""

import math
import os
import types
import typing

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from finetune_opt import distributed
from finetune_opt.config.keys import LEGACY_OPTIMIZER_KEYS, nested, settings
from finetune_opt.config.schema import (CheckpointSection, DataSection, LoopSection, MeasureSection, ModelSection,
                                        OptimizerSection, OutputSection, PrecisionSection, SftSection, range_rule)
from finetune_opt.config.sft import check_sft_section
from finetune_opt.errors import ConfigError, one_of
from finetune_opt.measure.config_block import FLAT_NAMES, LAYOUT, SECTIONS, flat_name, flatten
from finetune_opt.models import cls_only_last_layer
from finetune_opt.models.loading import check_model_config, check_pretrained_positions, local_pretrained_config
from finetune_opt.optim import REGISTRY, get_optimizer_spec
from finetune_opt.optim.in_backward import refusal as in_backward_refusal
from finetune_opt.tasks import CLASSIFICATION, REGRESSION, check_task_fields, get_task

FIELDS = FLAT_NAMES  # every flat key, in the order messages list them
TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
              list: "a list", type(None): "null"}


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = Field("sst2", strict=True, description="a name in finetune_opt.tasks.TASKS")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    loop: LoopSection = Field(default_factory=LoopSection)
    precision: PrecisionSection = Field(default_factory=PrecisionSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    measure: MeasureSection = Field(default_factory=MeasureSection)
    output: OutputSection = Field(default_factory=OutputSection)
    sft: SftSection = Field(default_factory=SftSection)

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise config_error(e) from None

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, values):
        """Flat keys, dotted keys and section blocks -> sections; schedule-free's warm-up into its block."""
        if not isinstance(values, dict):
            return values
        values = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in values.items()}
        return _warmup_into_optimizer(nested(settings(values.items(), "RunConfig", named_optimizer=False)))

    @field_validator("task")
    @classmethod
    def _known_task(cls, name):
        get_task(name)
        return name

    @model_validator(mode="after")
    def _across_sections(self):
        task = get_task(self.task)
        self.precision.group_by_length = self._resolve_group_by_length(task)
        check_task_fields(task, self.data)
        if not 0 <= self.measure.timing_warmup_steps < self.loop.max_steps:
            raise ConfigError(f"timing_warmup_steps must be in [0, max_steps={self.loop.max_steps}), "
                              f"got {self.measure.timing_warmup_steps!r}")
        model_settings = self._check_model_length()
        self._check_schedule()
        self._check_in_backward()
        distributed.check_runs_here(self.sharded_modes(), get_optimizer_spec(self.optimizer.name))  # FSDP2 here?
        self.precision.last_layer_cls_only = self._resolve_last_layer_cls_only(task, model_settings)
        check_sft_section(task, self.sft, self.data)
        if self.data.holdout_examples is not None and task.problem_type not in (CLASSIFICATION, REGRESSION):
            raise ConfigError(f"holdout_examples is for classification and regression tasks, not task {task.name!r}")
        if self.data.data_dir is None and task.local and os.environ.get("FINETUNE_OPT_DATA") and not self.data.dataset:
            self.data.data_dir = os.path.join(os.environ["FINETUNE_OPT_DATA"], self.task)
        return self

    def _check_model_length(self) -> dict:
        """max_length against the model's positions; returns the model's config as validation can
        read it: model_config, a local config.json, or {} (a Hub name)."""
        model, max_length = self.model, self.data.max_length
        if model.config is not None:
            check_model_config(model.config, max_length)
            return model.config
        settings_ = local_pretrained_config(model.name) or {}
        check_pretrained_positions(model.name, settings_, max_length)
        return settings_

    def _check_schedule(self):
        name, scheduler = self.optimizer.name, self.loop.scheduler
        if get_optimizer_spec(name).owns_lr_schedule and scheduler not in ("linear", "constant"):
            # linear is the default, so it cannot tell a choice from an unset field; cosine can
            raise ConfigError(f"{name} runs without an LR schedule (its own warmup, then constant): "
                              f"scheduler={scheduler} would be ignored; set scheduler=constant")

    def _check_in_backward(self):
        # read once, then cleared: pydantic compares private attributes, and a config rebuilt from its
        # own dump (implementation given) must equal it
        defaulted, self.optimizer._implementation_defaulted = self.optimizer._implementation_defaulted, False
        if not self.precision.optimizer_in_backward:
            return
        spec = get_optimizer_spec(self.optimizer.name)
        if defaulted:  # not a compiled step: it would compile per parameter
            self.optimizer.implementation = spec.default_for(distributed.device_type(), in_backward=True,
                                                             sharded=distributed.fsdp2_requested())
        reason = in_backward_refusal(spec, self.optimizer.implementation,
                                     grad_accum=self.loop.grad_accum, max_grad_norm=self.loop.max_grad_norm,
                                     mixed_precision=self.precision.mixed_precision,
                                     num_processes=distributed.world_size())
        if reason:
            raise ConfigError(reason)

    def _resolve_group_by_length(self, task) -> bool:
        """null -> on where batches are grouped by length; an explicit true elsewhere is refused,
        not ignored."""
        wanted = self.precision.group_by_length
        if task.problem_type in (CLASSIFICATION, REGRESSION):
            return True if wanted is None else wanted
        if wanted is True:
            raise ConfigError(f"group_by_length is for classification and regression tasks, not task {task.name!r} "
                              f"(its batches are not grouped by length): set group_by_length=null")
        return False

    def _resolve_last_layer_cls_only(self, task, model: dict) -> bool | None:
        """null -> whether the model supports it; stays null only while the model type is unknown
        (a Hub name: decided when the model is loaded)."""
        wanted = self.precision.last_layer_cls_only
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

    def sharded_modes(self) -> dict:
        """The settings distributed.check_runs_here refuses under FSDP2 / DeepSpeed."""
        return {"implementation": self.optimizer.implementation,
                "optimizer_in_backward": self.precision.optimizer_in_backward,
                "compile_model": self.precision.compile_model, "generation_examples": self.sft.generation_examples}

    def flat(self) -> dict:
        """Every setting by its flat name (the optimizer's own hyperparameters in optimizer_args)."""
        return flatten(self.model_dump())


def json_schema() -> dict:
    """RunConfig's JSON Schema, for an editor to complete and check a config file: the sections, and
    beside them every flat key (the first format, still accepted) with its section field's type."""
    schema = RunConfig.model_json_schema()
    sections, properties = schema["$defs"], schema["properties"]
    for flat, (section, field) in LAYOUT.items():
        if section is None:
            continue
        if field is None:  # optimizer_args: the optimizer's own hyperparameters
            own = {"type": "object", "description": "the optimizer's own hyperparameters (betas, eps, ...)"}
        else:
            own = sections[RunConfig.model_fields[section].annotation.__name__]["properties"][field]
        flat_form = {**own, "description": f"{section}.{field or '<name>'} written flat: " + own.get("description", "")}
        properties[flat] = {"anyOf": [properties[flat], flat_form]} if flat in SECTIONS else flat_form
    properties.update({k: {"description": f"optimizer.{k} written flat (the first config format)"}
                       for k in LEGACY_OPTIMIZER_KEYS})
    return schema


def _warmup_into_optimizer(values: dict) -> dict:
    """Schedule-free runs without an LR schedule and warms up by itself: warmup_ratio becomes its
    warmup_steps, unless those are given too (then the two would disagree). Read before the sections
    are validated (wrong types are refused there), so that a given warmup_steps is told from a default."""
    block, loop = values.get("optimizer") or {}, values.get("loop") or {}
    name = block.get("name", OptimizerSection.model_fields["name"].default)
    spec = REGISTRY.get(name) if isinstance(name, str) else None  # (a wrong name is refused in its section)
    if spec is None or not spec.owns_lr_schedule:
        return values
    ratio = _number_or_zero(loop.get("warmup_ratio", LoopSection.model_fields["warmup_ratio"].default))
    if not ratio:
        return values
    if block.get("warmup_steps"):
        raise ConfigError(f"{spec.name} warms up by itself: give warmup_ratio or optimizer.warmup_steps, not both")
    steps = loop.get("max_steps", LoopSection.model_fields["max_steps"].default)
    steps = steps if isinstance(steps, int) and not isinstance(steps, bool) else 0
    return {**values, "optimizer": {**block, "warmup_steps": math.ceil(ratio * steps)}}


def _number_or_zero(value) -> float:
    """warmup_ratio as written (YAML may give '1e-1'); 0 for what validation will refuse."""
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else 0.0
    except ValueError:
        return 0.0
    return number if math.isfinite(number) and 0 <= number < 1 else 0.0


def field_info(section: str | None, field: str):
    """pydantic's FieldInfo of one setting."""
    if section is None:
        return RunConfig.model_fields[field]
    return RunConfig.model_fields[section].annotation.model_fields[field]


def field_types(annotation) -> tuple:
    """The plain types a field's annotation admits, in order: `int | None` -> (int, NoneType);
    a Literal is its values' type, an Annotated its base type."""
    if typing.get_origin(annotation) is typing.Annotated:
        return field_types(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is typing.Literal:
        return (type(typing.get_args(annotation)[0]),)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for a in typing.get_args(annotation) for t in field_types(a))
    return (annotation,)


def flat_field_types() -> dict:
    """{flat name: the plain types it admits} for every setting with a type of its own."""
    return {flat: field_types(field_info(*place).annotation) if place[1] else (dict,)
            for flat, place in LAYOUT.items()}


def _literal_choices(annotation) -> tuple:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return next(c for a in typing.get_args(annotation) if (c := _literal_choices(a)))


def config_error(error: ValidationError) -> ConfigError:
    """pydantic's first error -> the one line users see: a rule's own ConfigError as raised, else
    `{field} must be {what it admits}, got {value!r}`, naming the field as users type it."""
    first = error.errors()[0]
    raised = (first.get("ctx") or {}).get("error")
    if isinstance(raised, ConfigError):
        return raised
    place = first["loc"] if len(first["loc"]) == 2 else (None, first["loc"][0])
    name, value, info = flat_name(*place), first["input"], field_info(*place)
    kinds = field_types(info.annotation)
    if first["type"] == "literal_error" and isinstance(value, str):
        return one_of(name, value, _literal_choices(info.annotation))
    rule = range_rule(info) if first["type"] in ("greater_than_equal", "greater_than", "less_than") else None
    expected = rule + (" or null" if type(None) in kinds else "") if rule else \
        " or ".join(TYPE_NAMES[k] for k in kinds)
    return ConfigError(f"{name} must be {expected}, got {value!r}")
