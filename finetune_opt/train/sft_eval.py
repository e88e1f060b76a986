"""Evaluation of a fine-tuned causal LM: held-out loss / perplexity on the response tokens, and
downstream accuracy by greedy generation (GSM8K: exact match of the number after `#### `).
Both are gathered across ranks with gather_for_metrics (samples padded onto the last batch dropped)."""

import math
import re
from decimal import Decimal, InvalidOperation

import torch
import torch.nn.functional as F

from finetune_opt.train.evaluation import gather_batches

# "#### 1,234", "#### -5", "#### $3.50": the first number after the first `####` (the model may ramble
# on). WordPiece tokenizers decode `####` as "# # # #", hence the optional spaces.
GSM8K_ANSWER = re.compile(r"#\s?#\s?#\s?#\s*\$?\s*(-?\$?[\d,]*\.?\d+)")


def extract_gsm8k_answer(text: str) -> str | None:
    """The final answer as a canonical number string ("1,000.50" -> "1000.5"), or None if there is none."""
    match = GSM8K_ANSWER.search(text)
    if not match:
        return None
    digits = match.group(1).replace(",", "").replace("$", "")
    try:
        value = Decimal(digits)
    except InvalidOperation:
        return None
    # normalize() drops trailing zeros ("3.50" == "3.5", "12.0" == "12"); "f" avoids "1E+3".
    return format(value.normalize(), "f") if value != 0 else "0"


GENERATION_METRICS = {"gsm8k": extract_gsm8k_answer}


@torch.no_grad()
def heldout_loss(model, loader, accelerator) -> dict:
    """Token-mean cross entropy over the response tokens (labels != -100) of every held-out example."""
    def per_example(batch):  # (summed loss, response tokens) of each example
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        return per_token.sum(1), (labels != -100).sum(1).float()

    sums, counts = gather_batches(loader, accelerator, per_example)
    loss = (sums.sum() / counts.sum()).item()
    return {"eval_loss": loss, "perplexity": math.exp(loss), "eval_examples": len(counts),
            "eval_response_tokens": int(counts.sum())}


@torch.no_grad()
def generation_accuracy(model, loader, accelerator, tokenizer, references: list[str], extract,
                        max_new_tokens: int, eos_id) -> dict:
    """Greedy-decode every prompt of `loader` (left-padded batches; `index` points into
    `references`, the reference responses as text) and score exact match of the extracted answer. Returns accuracy, how many generations had an
    answer at all, and a few samples."""
    generator = accelerator.unwrap_model(model)
    scores, samples = [], []
    for batch in loader:
        width = batch["input_ids"].shape[1]
        out = generator.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_id)
        texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        predicted = [extract(t) for t in texts]
        expected = [extract(references[i]) for i in batch["index"].tolist()]
        local = torch.tensor([[p is not None and p == e, p is not None] for p, e in zip(predicted, expected)],
                             dtype=torch.float32, device=batch["input_ids"].device)
        scores.append(accelerator.gather_for_metrics(local).cpu())
        samples += [{"generated": t, "extracted": p, "expected": e} for t, p, e in zip(texts, predicted, expected)]
    scores = torch.cat(scores)
    return {"generation_accuracy": scores[:, 0].mean().item(), "generation_answered": scores[:, 1].mean().item(),
            "generation_examples": len(scores), "generation_samples": samples[:3]}
