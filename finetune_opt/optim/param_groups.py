"""Decay / no-decay parameter groups.

Biases and normalisation weights get no weight decay: decaying a LayerNorm gain towards 0 fights
the normalisation, and biases have no scale symmetry to regularise. The rule reproduces
`transformers.Trainer.get_decay_parameter_names` (tests compare the two on BERT, GPT-2 and
Llama) without importing transformers, so the optimizer layer works on any `nn.Module`.
"""

import re

from torch import nn

# Same patterns as the HF Trainer: "bias", and the spellings of norm modules' parameter names.
NO_DECAY_NAME_PATTERNS = tuple(
    re.compile(p) for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
)
NORM_LAYER_TYPES = (nn.LayerNorm,)


def _is_no_decay_name(name: str) -> bool:
    return any(p.search(name.lower()) for p in NO_DECAY_NAME_PATTERNS)


def decay_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that receive weight decay (trainable or not)."""
    names = []
    for module_name, module in model.named_modules():
        # Parameters owned directly by `module`; children are visited on their own.
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, NORM_LAYER_TYPES) or _is_no_decay_name(full):
                continue
            names.append(full)
    return names


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups, `decay` and `no_decay`, of the trainable parameters; empty groups dropped."""
    decay = set(decay_parameter_names(model))
    groups = {"decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["decay" if name in decay else "no_decay"].append(param)
    return [
        {"params": params, "weight_decay": weight_decay if key == "decay" else 0.0, "group_name": key}
        for key, params in groups.items()
        if params
    ]
