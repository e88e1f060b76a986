"""Batches for causal-LM fine-tuning: padded rows, or packed (padding-free) rows.

Packed: a micro-batch of B examples becomes one row of their concatenated tokens with
`position_ids` restarting at 0 for every example (transformers' DataCollatorWithFlattening).
No token attends across an example boundary: flash-attention models get the sequence boundaries
(`cu_seq_lens`), and sdpa / eager models in transformers >= 4.54 build a block-diagonal causal
mask from the restarting position ids (masking_utils.find_packed_sequence_indices). The first
label of every example is -100, so no example is trained to predict the next one's first token.
The same B examples per step as without packing, so the loss is the same token mean; only the
padding (and its compute) is gone. Models that ignore position ids for masking would silently
attend across examples, so `check_packing` compares packed and padded logits once before training. Training must run
with `use_cache=False`: with a KV cache, transformers does not look for packed sequences.
"""

import torch
from transformers import DataCollatorWithFlattening

from finetune_opt.errors import ConfigError

LOGIT_TOLERANCE = 1e-3  # float32 round-off is ~1e-6; attending across examples moves logits by ~0.1-1


def pad_collator(pad_id: int, padding_side: str = "right"):
    """input_ids padded with pad_id, labels with -100, attention_mask 0 on padding (left padding
    for generation, so every prompt ends where generation starts)."""

    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            n, pad = len(f["input_ids"]), width - len(f["input_ids"])
            parts = {"input_ids": (list(f["input_ids"]), [pad_id] * pad), "attention_mask": ([1] * n, [0] * pad)}
            if "labels" in f:
                parts["labels"] = (list(f["labels"]), [-100] * pad)
            for key, (values, padding) in parts.items():
                batch[key].append(padding + values if padding_side == "left" else values + padding)
            if "index" in f:  # generation prompts carry the position of their reference answer
                batch.setdefault("index", []).append(f["index"])
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items() if v}

    return collate


def packed_collator(model=None):
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    # flash attention needs the boundaries explicitly; sdpa / eager derive them from position_ids
    return DataCollatorWithFlattening(return_position_ids=True, separator_id=-100,
                                      return_flash_attn_kwargs=attn.startswith("flash"))


def train_collator(packing: bool, pad_id: int, model=None):
    return packed_collator(model) if packing else pad_collator(pad_id)


def padding_share(lengths: list[int], batch_size: int, packing: bool, seed: int = 0) -> float:
    """Share of the tokens the model processes that are padding, over one shuffled epoch."""
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    real = padded = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        real += sum(batch)
        padded += sum(batch) if packing else max(batch) * len(batch)
    return 1 - real / padded if padded else 0.0


@torch.no_grad()
def packed_vs_padded(model, features: list[dict], pad_id: int) -> dict:
    """The same examples packed and padded (eval mode: no dropout): both losses and the largest
    difference of any real token's logits. The model runs as configured for training, so a
    forgotten `use_cache=False` (a KV cache switches off the packed-sequence mask) shows up here."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for collate in (packed_collator(model), pad_collator(pad_id)):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(features).items()}
        out.append(model(**batch))
    model.train(was_training)
    mask = pad_collator(pad_id)(features)["attention_mask"].bool().to(device)
    logit_diff = (out[0].logits[0] - out[1].logits[mask]).abs().max().item()
    return {"packed_loss": out[0].loss.item(), "padded_loss": out[1].loss.item(), "max_logit_diff": logit_diff}


def check_packing(model, features: list[dict], pad_id: int):
    """Refuse packing for a model whose attention lets packed examples see each other. Logits, not
    the loss: at random init the loss is ~ln(vocab) whatever the model attends to."""
    found = packed_vs_padded(model, features, pad_id)
    if found["max_logit_diff"] > LOGIT_TOLERANCE:
        raise ConfigError(f"packing changes this model's outputs (max logit difference {found['max_logit_diff']:.3g}): "
                          f"its attention ({model.config._attn_implementation}, use_cache={model.config.use_cache}) "
                          f"does not separate packed examples; set packing=false")
