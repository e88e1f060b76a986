"""LoRA (and DoRA) adapters through the `peft` library, from a config block:

    peft: {method: lora, r: 8, alpha: 16, dropout: 0.05, target_modules: [q_proj, v_proj]}

The base weights are frozen, so `create_optimizer` (which groups the requires_grad parameters)
sees only the adapter matrices. Checkpoints hold only what trains (the adapter): the frozen base
comes back from `model` / `model_config` + seed, as at the start of the run. The final model is
the adapter (`adapter_model.safetensors`, loadable with PeftModel.from_pretrained), or with
`merge_adapter=true` the base model with the adapter merged in (a plain from_pretrained model).
"""

import os

import torch

from finetune_opt.errors import ConfigError, one_of

METHODS = ("lora", "dora")
# config key -> peft.LoraConfig argument
LORA_KEYS = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "target_modules",
             "bias": "bias", "modules_to_save": "modules_to_save"}


def check_peft_spec(spec) -> None:
    """Validate the config block before anything is loaded (one-line ConfigError)."""
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise ConfigError(f"peft must be a mapping like {{method: lora, r: 8, alpha: 16}}, got {spec!r}")
    if spec.get("method") not in METHODS:
        raise one_of("peft method", spec.get("method"), METHODS)
    unknown = [k for k in spec if k != "method" and k not in LORA_KEYS]
    if unknown:
        raise one_of("peft key", unknown[0], ["method", *LORA_KEYS])
    for key, (ok, rule) in PEFT_VALUES.items():
        if key in spec and not ok(spec[key]):
            raise ConfigError(f"peft {key} must be {rule}, got {spec[key]!r}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _names(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(n, str) for n in v)


BIAS = ("none", "all", "lora_only")
# key -> (check, the rule the message states): types first, so a wrong one is one line, not peft's traceback
PEFT_VALUES = {
    "r": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "alpha": (lambda v: _number(v) and v > 0, "a number > 0"),
    "dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "target_modules": (lambda v: isinstance(v, str) or _names(v), "a list of module names or one name"),
    "bias": (lambda v: v in BIAS, "one of " + ", ".join(BIAS)),
    "modules_to_save": (lambda v: v is None or _names(v), "a list of module names or null"),
}


def apply_peft(model, spec: dict):
    """The model wrapped as a PeftModel with fresh adapters; only the adapters require grad."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ConfigError("peft is not installed: pip install 'finetune_opt[peft]'") from None
    kwargs = {LORA_KEYS[k]: v for k, v in spec.items() if k != "method"}
    kwargs.setdefault("target_modules", "all-linear")  # every linear layer but the output head
    try:
        lora = LoraConfig(task_type=TaskType.CAUSAL_LM, use_dora=spec["method"] == "dora", **kwargs)
        return get_peft_model(model, lora)
    except ValueError as e:  # e.g. target modules not found in the model
        raise ConfigError(f"peft: {str(e).splitlines()[0]}") from None


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def parameter_counts(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_share": trainable / total}


def register_adapter_checkpoints(accelerator):
    """Make accelerator.save_state / load_state keep only the trainable (adapter) weights of a
    PeftModel; the frozen base is rebuilt by the run itself, identically."""

    def trainable_shapes(model) -> dict:
        return {name: p.shape for name, p in model.named_parameters() if p.requires_grad}

    # FSDP2 saves and loads its sharded state through torch.distributed.checkpoint, with no
    # `weights` list to filter: its checkpoints hold the base too (sharded), and load it back.
    from accelerate.utils import DistributedType
    if accelerator.distributed_type == DistributedType.FSDP:
        return

    def save_hook(models, weights, output_dir):
        for i, model in enumerate(models):
            if is_peft(accelerator.unwrap_model(model)):
                keep = trainable_shapes(model)
                weights[i] = {k: v for k, v in weights[i].items() if k in keep}

    def load_hook(models, input_dir):
        for i, model in enumerate(list(models)):
            if is_peft(accelerator.unwrap_model(model)):
                _load_adapter(model, input_dir, i, trainable_shapes(model))
                models.remove(model)  # loaded here; accelerate would load strictly, expecting a full state

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _load_adapter(model, input_dir: str, index: int, expected: dict):
    from safetensors.torch import load_file

    name = "model" if index == 0 else f"model_{index}"  # accelerate's file names
    path = os.path.join(input_dir, f"{name}.safetensors")
    if not os.path.isfile(path):
        path = os.path.join(input_dir, f"{name.replace('model', 'pytorch_model')}.bin")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state = load_file(path)
    differ = set(state) ^ set(expected) or {k for k in state if state[k].shape != expected[k]}
    if differ:
        raise ConfigError(f"checkpoint {input_dir} does not hold this run's adapter ({len(differ)} weights differ "
                          f"in name or shape, e.g. {sorted(differ)[0]}; was it made with the same peft block?)")
    model.load_state_dict(state, strict=False)


def model_to_save(model, merge: bool):
    """What save_final_model writes: the PeftModel (adapter only) or, merged, the plain base model."""
    return model.merge_and_unload() if merge and is_peft(model) else model
