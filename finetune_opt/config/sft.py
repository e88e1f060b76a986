"""Validation of the RunConfig fields of instruction SFT (called from RunConfig.__post_init__),
kept apart so the recipe's fields do not tangle with the rest of the config."""

from finetune_opt.errors import ConfigError, refuse_unused
from finetune_opt.models.peft import check_peft_spec


# Fields only the SFT recipe reads, with the value that means "not used": any other value on
# another recipe's task would be accepted and recorded in results.json, yet not done.
SFT_ONLY = {"packing": False, "peft": None, "merge_adapter": False, "prompt_column": None, "input_column": None,
            "response_column": None, "prompt_template": None, "use_chat_template": None}


def check_sft_fields(cfg) -> None:
    for name in ("packing", "merge_adapter"):
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    _refuse_sft_fields_elsewhere(cfg)
    if cfg.use_chat_template not in (None, True, False):
        raise ConfigError(f"use_chat_template must be true, false or null, got {cfg.use_chat_template!r}")
    if not isinstance(cfg.generation_examples, int) or cfg.generation_examples < 0:
        raise ConfigError(f"generation_examples must be an integer >= 0, got {cfg.generation_examples!r}")
    if not isinstance(cfg.max_new_tokens, int) or cfg.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be an integer >= 1, got {cfg.max_new_tokens!r}")
    if cfg.prompt_template is not None and "{prompt}" not in cfg.prompt_template:
        raise ConfigError(f"prompt_template must contain {{prompt}}, got {cfg.prompt_template!r}")
    if cfg.generation_examples and not _has_generation_metric(cfg.task):
        raise ConfigError(f"generation_examples: task {cfg.task} has no generation metric (gsm8k has); set it to 0")
    if cfg.merge_adapter and not cfg.peft:
        raise ConfigError("merge_adapter=true needs a peft block (there is no adapter to merge)")
    check_peft_spec(cfg.peft)


def _has_generation_metric(task: str) -> bool:
    from finetune_opt.data.instructions import INSTRUCT_TASKS  # lazily: it imports `datasets`

    # other recipes' tasks: their recipe rejects them with its own message
    return task not in INSTRUCT_TASKS or INSTRUCT_TASKS[task].metric is not None


def _refuse_sft_fields_elsewhere(cfg) -> None:
    from finetune_opt.tasks import INSTRUCTION_SFT, get_task

    task = get_task(cfg.task)
    if task.problem_type != INSTRUCTION_SFT:
        refuse_unused(cfg, SFT_ONLY, f"is for the SFT recipe (tasks gsm8k, instruct); {task.recipes['accelerate']} "
                                     f"(task {task.name!r}) does not use it")
    else:
        refuse_unused(cfg, {"train_eval_examples": None}, "is not done by the SFT recipe (its eval scores held-out "
                                                          "responses only)")
