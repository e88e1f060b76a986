"""The run configuration as results.json and checkpoints store it: in sections since schema 2.

Version 1 stored every field flat (`lr`, `max_steps`, ...). The flat names stay the short
spelling users type (`max_steps=100`), so this table of where each flat name lives is both the
migration of old files and the meaning of a flat key. It lives here, below the config package,
because reading an old results.json or checkpoint must not need the schema's validation (which
loads tasks and models); config/schema.py is tested to agree with it.
"""

# flat name -> (section, field in it), in version 1's order (the order error messages list them in).
# None as the section: a top-level field. The optimizer's own hyperparameters (betas, eps, ...)
# are keys of its section beside name and lr; version 1 kept them in `optimizer_args`.
OPTIMIZER_ARGS = "optimizer_args"
LAYOUT = {
    "task": (None, "task"),
    **{k: ("data", k) for k in ("data_dir", "data_files", "dataset", "dataset_config", "text_columns",
                                "label_column", "metric")},
    "model": ("model", "name"), "tokenizer": ("model", "tokenizer"), "model_config": ("model", "config"),
    "optimizer": ("optimizer", "name"), "implementation": ("optimizer", "implementation"),
    "lr": ("optimizer", "lr"), "weight_decay": ("optimizer", "weight_decay"), OPTIMIZER_ARGS: ("optimizer", None),
    **{k: ("loop", k) for k in ("max_steps", "batch_size", "grad_accum")},
    "max_length": ("data", "max_length"),
    **{k: ("loop", k) for k in ("scheduler", "warmup_ratio", "max_grad_norm")},
    **{k: ("precision", k) for k in ("mixed_precision", "group_by_length", "compile_model", "last_layer_cls_only",
                                     "optimizer_in_backward", "gradient_checkpointing")},
    "seed": ("loop", "seed"),
    **{k: ("data", k) for k in ("train_examples", "eval_examples", "train_eval_examples", "holdout_examples")},
    **{k: ("loop", k) for k in ("eval_batch_size", "eval_before_training")},
    **{k: ("checkpoint", k) for k in ("save_every", "resume", "save_final_model", "max_nonfinite_steps")},
    **{k: ("measure", k) for k in ("timing_warmup_steps", "memory_breakdown", "log_every", "log_with")},
    **{k: ("output", k) for k in ("output_dir", "overwrite")},
    **{k: ("sft", k) for k in ("prompt_column", "input_column", "response_column", "prompt_template",
                               "use_chat_template", "packing", "peft", "merge_adapter", "generation_examples",
                               "max_new_tokens")},
}
FLAT_NAMES = list(LAYOUT)
SECTIONS = ("model", "data", "optimizer", "loop", "precision", "checkpoint", "measure", "output", "sft")
FLAT_NAME = {place: flat for flat, place in LAYOUT.items()}  # (section, field) -> flat name


def flat_name(section: str | None, field: str) -> str:
    """What users type for one setting: its flat name, or section.field where it has none
    (an optimizer's own hyperparameter: optimizer.betas)."""
    return FLAT_NAME.get((section, field), f"{section}.{field}")


def is_sectioned(config: dict) -> bool:
    """A version-2 block: a section written as a mapping (model and optimizer are also flat names,
    holding a string there)."""
    return any(isinstance(config.get(s), dict) for s in SECTIONS)


def nest(flat: dict) -> dict:
    """A version-1 (flat) config block -> sections; keys it does not know are kept at the top."""
    nested = {}
    for key, value in flat.items():
        section, field = LAYOUT.get(key, (None, key))
        if key == OPTIMIZER_ARGS:
            nested.setdefault("optimizer", {}).update(value or {})
        elif section is None:
            nested[field] = value
        else:
            nested.setdefault(section, {})[field] = value
    return nested


def flatten(config: dict) -> dict:
    """A config block of either version -> flat names (the optimizer's own hyperparameters in
    optimizer_args), for comparing a checkpoint's config with a resuming one field by field."""
    if not is_sectioned(config):
        return dict(config)
    flat = {}
    for key, value in config.items():
        if key not in SECTIONS:
            flat[key] = value
            continue
        if key == "optimizer":
            flat[OPTIMIZER_ARGS] = {}
        for field, v in value.items():
            name = FLAT_NAME.get((key, field))
            if name is None and key == "optimizer":
                flat.setdefault(OPTIMIZER_ARGS, {})[field] = v
            else:
                flat[name or f"{key}.{field}"] = v
    return flat
