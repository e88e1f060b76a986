"""Realistic parameter sets: real models' exact tensors (built from their configs, untrained),
with gradients set as after a backward pass. Built as models, not shape lists, so each optimizer
gets the parameter groups it would get in training (decay split; Muon's hidden matrices)."""

import math

import torch
import transformers

CONFIGS = {
    "tiny-bert": lambda: transformers.BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=64),  # for tests
    "minilm-22.7M": lambda: transformers.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                                    intermediate_size=1536),
    "bert-base-110M": lambda: transformers.BertConfig(),
    "gpt2-124M": lambda: transformers.GPT2Config(),
    "llama-1.1B": lambda: transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                                   num_attention_heads=32, num_key_value_heads=4, vocab_size=32000),
}


def param_shapes(name: str) -> list[tuple]:
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(CONFIGS[name]())
    return [tuple(p.shape) for p in model.parameters()]


def param_count(name: str) -> int:
    return sum(math.prod(s) for s in param_shapes(name))


def make_model(name: str, dtype: torch.dtype, device, seed=0) -> torch.nn.Module:
    """The model's parameters (small random values) with random gradients already set."""
    with torch.device("meta"):  # skip the (slow, irrelevant) weight initialisation
        model = transformers.AutoModel.from_config(CONFIGS[name](), dtype=dtype)
    model.to_empty(device=device)  # AutoModel has no head, so no tied weights to break
    torch.manual_seed(seed)
    with torch.no_grad():  # uniform: a third of randn's cost, and step kernels don't care
        for p in model.parameters():
            p.uniform_(-0.03, 0.03)
            p.grad = torch.empty_like(p).uniform_(-1e-3, 1e-3)
    return model
