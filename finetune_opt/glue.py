"""GLUE classification pieces shared by the Accelerate and Trainer recipes: the same data
preparation and the same metric computation, so the two engines are compared like for like."""

import torch
import torch.nn.functional as F
from transformers import DataCollatorWithPadding

from finetune_opt.data import TASKS, load_task
from finetune_opt.errors import one_of
from finetune_opt.metrics import load_metric

GLUE_TASKS = ("sst2", "mrpc")


def check_glue_task(task: str):
    if task not in GLUE_TASKS:
        raise one_of("task for this recipe", task, GLUE_TASKS)


def load_glue(cfg, tokenizer, main_process_first):
    """Tokenized {"train", "eval"} (+ "train_eval": a seeded slice of the training subset, for the
    train-vs-dev gap, when cfg.train_eval_examples is set); labels in column "labels"."""
    spec = TASKS[cfg.task]
    data = load_task(cfg.task, cfg.data_dir, cfg.train_examples, cfg.eval_examples, seed=cfg.seed)
    if cfg.train_eval_examples:
        n = min(cfg.train_eval_examples, len(data["train"]))
        data["train_eval"] = data["train"].shuffle(seed=cfg.seed + 1).select(range(n))

    def tokenize(batch):
        return tokenizer(*[batch[c] for c in spec.text_columns], truncation=True, max_length=cfg.max_length)

    with main_process_first():  # tokenize once; other ranks read the cache
        data = data.map(tokenize, batched=True, remove_columns=list(spec.text_columns))
    return data.rename_column("label", "labels")


def glue_collator(tokenizer, cfg):
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if cfg.mixed_precision != "no" else None)


def glue_metrics(task: str, logits: torch.Tensor, labels: torch.Tensor, prefix: str = "") -> dict:
    """eval_loss (mean cross-entropy), the task's metrics, and the example count."""
    logits, labels = logits.float(), labels.long()
    result = {"eval_loss": F.cross_entropy(logits, labels).item()}
    predictions = logits.argmax(-1)
    for name in TASKS[task].metrics:
        result.update(load_metric(name).compute(predictions=predictions, references=labels))
    result["eval_examples"] = len(labels)
    return {f"{prefix}{k}": v for k, v in result.items()}
