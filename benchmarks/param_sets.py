"""Realistic parameter sets: the exact tensor shapes of real models, built on the meta device."""

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


def make_params(shapes, dtype, device, seed=0) -> list[torch.nn.Parameter]:
    """Parameters with gradients already set, as after a backward pass."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=g) * 0.02).to(device=device, dtype=dtype))
        p.grad = (torch.randn(shape, generator=g) * 1e-3).to(device=device, dtype=dtype)
        params.append(p)
    return params
