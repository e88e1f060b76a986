"""The last encoder layer computed for the [CLS] position only.

A BERT-style sequence classifier reads one vector of the last layer, the first position's (BERT's
pooler and RoBERTa's / ELECTRA's heads take `hidden_states[:, 0]`). Every other position of that
layer is computed and thrown away: its queries, attention output, output projection and
feed-forward, about five sixths of the layer. Here the layer computes keys and values for every
position (the [CLS] query attends to all of them) and everything else for position 0 alone; the
logits and every gradient are those of the whole layer (float rounding aside), with about a
sixth less work for a 6-layer model like all-MiniLM-L6-v2 (measured: benchmarks/end_to_end.py).

The other positions of the layer's output are NaN, so that anything reading them fails loudly
instead of using stale values. Dropout draws fewer random numbers, so a seeded run differs from
one without this in which units are dropped, not in the distribution.

The layer's `forward` is replaced on that instance only: parameter names, checkpoints, saved
models and module hooks (FSDP, DeepSpeed) are those of the unchanged model, and the layer is
still recomputed under gradient checkpointing. Two things differ: `output_attentions` returns no
attention map for the last layer, and the model object itself does not pickle (`torch.save(model)`;
its state_dict and save_pretrained do).
"""

import sys
import types
from functools import partial

import torch

from finetune_opt.errors import ConfigError

# model_type -> its classifier reads only position 0 of the last layer, and its layer is BERT's
# (post-LayerNorm, attention.self / attention.output / intermediate / output). Parity with the
# unchanged model is tested for every entry (tests/test_cls_only_last_layer.py).
CLS_HEAD_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "data2vec-text")
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")  # the mask layouts handled below


def refusal(model_type: str | None, is_decoder: bool = False) -> str | None:
    """Why a model of this type cannot run its last layer for [CLS] only, or None (validation: the config)."""
    if model_type not in CLS_HEAD_MODEL_TYPES:
        return (f"last_layer_cls_only: model_type {model_type!r} is not one whose classifier reads only [CLS] "
                f"from a BERT-style layer; valid: {', '.join(CLS_HEAD_MODEL_TYPES)} (or last_layer_cls_only=false)")
    if is_decoder:  # causal attention: [CLS] would see only itself
        return "last_layer_cls_only: the model is configured as a decoder (is_decoder: true)"
    return None


def model_refusal(model) -> str | None:
    """refusal() for a loaded model, which also knows its attention implementation."""
    config = model.config
    reason = refusal(config.model_type, getattr(config, "is_decoder", False))
    if reason is None and config._attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        reason = (f"last_layer_cls_only: attention implementation {config._attn_implementation!r} is not one of "
                  f"{', '.join(ATTENTION_IMPLEMENTATIONS)}")
    return reason


def apply(model) -> None:
    """Make `model`'s (a *ForSequenceClassification of CLS_HEAD_MODEL_TYPES) last layer compute [CLS] only;
    a model without layers has nothing to skip."""
    reason = model_refusal(model)
    if reason:
        raise ConfigError(reason)
    if len(model.base_model.encoder.layer):
        last = model.base_model.encoder.layer[-1]
        last.forward = types.MethodType(_cls_only_forward, last)


def is_applied(model) -> bool:
    layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
    forward = getattr(layers[-1], "forward", None) if layers else None
    return getattr(forward, "__func__", None) is _cls_only_forward


def _attention_function(self_attention):
    implementation = self_attention.config._attn_implementation
    if implementation == "eager":  # each modeling file has its own eager_attention_forward
        return sys.modules[type(self_attention).__module__].eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[implementation]


def _cls_only_forward(layer, hidden_states, attention_mask=None, *args, **kwargs):
    """BertLayer.forward (self-attention, then feed-forward) with queries and outputs for position 0."""
    kwargs.pop("cache", None), kwargs.pop("encoder_attention_mask", None)  # encoder-only: no cache, no cross-attention
    # The class's forward, which this replaces, is where transformers checkpoints a layer: do it here.
    if getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled():
        return layer._gradient_checkpointing_func(partial(_cls_only_layer, layer, **kwargs), hidden_states, attention_mask)
    return _cls_only_layer(layer, hidden_states, attention_mask, **kwargs)


def _cls_only_layer(layer, hidden_states, attention_mask, **kwargs):
    attention = layer.attention.self
    batch, length, width = hidden_states.shape
    cls = hidden_states[:, :1]

    def heads(x):  # (batch, positions, width) -> (batch, heads, positions, head size)
        return x.view(batch, x.shape[1], -1, attention.attention_head_size).transpose(1, 2)

    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] == length:
        attention_mask = attention_mask[:, :, :1]  # the [CLS] query's row of the (query, key) mask
    scaling = getattr(attention, "scaling", attention.attention_head_size ** -0.5)
    context, _ = _attention_function(attention)(
        attention, heads(attention.query(cls)), heads(attention.key(hidden_states)), heads(attention.value(hidden_states)),
        attention_mask, dropout=attention.dropout.p if attention.training else 0.0, scaling=scaling, **kwargs)
    cls = layer.attention.output(context.reshape(batch, 1, width), cls)  # projection, dropout, residual, LayerNorm
    cls = layer.feed_forward_chunk(cls)
    return torch.cat([cls, cls.new_full((batch, length - 1, width), float("nan"))], dim=1)
