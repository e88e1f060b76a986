"""The rules of instruction SFT's section that depend on the task (called from RunConfig's
validation; the section's own rules are in finetune_opt.config.schema.SftSection), kept apart so
the recipe's settings do not tangle with the rest of the config."""

from finetune_opt.errors import ConfigError, refuse_unused
from finetune_opt.tasks import INSTRUCTION_SFT


# Fields only the SFT recipe reads, with the value that means "not used": any other value on
# another recipe's task would be accepted and recorded in results.json, yet not done.
SFT_ONLY = {"packing": False, "peft": None, "merge_adapter": False, "prompt_column": None, "input_column": None,
            "response_column": None, "prompt_template": None, "use_chat_template": None}


def check_sft_section(task, sft, data) -> None:
    """`sft` (SftSection) and `data` (DataSection) against `task` (a tasks.Task)."""
    if task.problem_type != INSTRUCTION_SFT:
        refuse_unused(sft, SFT_ONLY, f"is for the SFT recipe (tasks gsm8k, instruct); {task.recipes['accelerate']} "
                                     f"(task {task.name!r}) does not use it")
    else:
        refuse_unused(data, {"train_eval_examples": None}, "is not done by the SFT recipe (its eval scores held-out "
                                                           "responses only)")
    if sft.generation_examples and not _has_generation_metric(task.name):
        raise ConfigError(f"generation_examples: task {task.name} has no generation metric (gsm8k has); set it to 0")


def _has_generation_metric(task: str) -> bool:
    from finetune_opt.data.instructions import INSTRUCT_TASKS  # lazily: it imports `datasets`

    # other recipes' tasks: their recipe rejects them with its own message
    return task not in INSTRUCT_TASKS or INSTRUCT_TASKS[task].metric is not None
