"""Sequence classification and regression pieces shared by the Accelerate and Trainer recipes: the
same data preparation, model head and metric computation, so the two engines are compared like for like."""

import torch
import torch.nn.functional as F
from transformers import DataCollatorWithPadding

from finetune_opt.models import cls_only_last_layer
from finetune_opt.data.loading import TaskData, load_task
from finetune_opt.metrics.loading import check_metrics, compute_metrics
from finetune_opt.models.loading import load_model
from finetune_opt.tasks import REGRESSION


def load_classification(cfg, tokenizer, main_process_first) -> TaskData:
    """Tokenized splits (+ "train_eval": a seeded slice of the training subset, for the train-vs-dev
    gap, when cfg.train_eval_examples is set); labels in column "labels"."""
    data = load_task(cfg)
    if cfg.metric and data.task.problem_type != REGRESSION and data.num_labels != 2:  # validation tried 2 classes
        check_metrics(cfg.metric, "classification", data.num_labels)
    splits = data.splits
    if cfg.train_eval_examples:
        n = min(cfg.train_eval_examples, len(splits["train"]))
        splits["train_eval"] = splits["train"].shuffle(seed=cfg.seed + 1).select(range(n))

    def tokenize(batch):
        return tokenizer(*[batch[c] for c in data.text_columns], truncation=True, max_length=cfg.max_length)

    with main_process_first():  # tokenize once; other ranks read the cache
        data.splits = splits.map(tokenize, batched=True, remove_columns=list(data.text_columns)) \
            .rename_column("label", "labels")
    return data


def classification_model(cfg, data: TaskData):
    """A sequence-classification model with the task's head: num_labels from the task or the data,
    MSE loss for regression, and the class names in config.id2label (so a saved model predicts names);
    its last layer computes [CLS] only when cfg.last_layer_cls_only (null: where the model supports it)."""
    names = {} if data.label_names is None else {"id2label": dict(enumerate(data.label_names)),
                                                 "label2id": {n: i for i, n in enumerate(data.label_names)}}
    model = load_model(cfg.model, head="classification", model_config=cfg.model_config, num_labels=data.num_labels,
                       problem_type=data.task.problem_type, **names)
    cls_only = cfg.last_layer_cls_only
    if cls_only is None:  # a Hub model, whose type validation could not read (its results.json keeps null)
        cls_only = cls_only_last_layer.model_refusal(model) is None
    if cls_only:
        cls_only_last_layer.apply(model)
    return model


def collator(tokenizer, cfg):
    # Multiples of 8: few distinct shapes for a compiled model, and tensor-core tiles under mixed precision
    # on a GPU. Not on CPU: SST-2's sentences are 13 tokens on average, so 8s would add a fifth more work.
    bucket = cfg.compile_model or (cfg.mixed_precision != "no" and torch.cuda.is_available())
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if bucket else None)


def metric_prefix(split: str) -> str:
    """"eval" -> "", "train_eval" -> "train_", "eval_mismatched" -> "mismatched_"."""
    return {"eval": "", "train_eval": "train_"}.get(split, split.removeprefix("eval_") + "_")


def eval_splits(data: TaskData) -> list[str]:
    return [s for s in data.splits if s != "train"]


def task_metrics(task, logits: torch.Tensor, labels: torch.Tensor, prefix: str = "", metrics=None) -> dict:
    """eval_loss (the training loss: cross-entropy, or MSE for regression), the task's metrics (or the
    `metric:` modules given, with the task's headline when none of them reports it), and the example count."""
    logits = logits.double()  # metrics in float64, whatever precision the model ran in
    if task.problem_type == REGRESSION:
        predictions, labels = logits.squeeze(-1), labels.double()
        loss = F.mse_loss(predictions, labels)
    else:
        predictions, labels = logits.argmax(-1), labels.long()
        loss = F.cross_entropy(logits, labels)
    scores = compute_metrics(metrics or task.metrics, predictions.numpy(), labels.numpy())
    if task.headline not in scores:  # compare and study rank runs by it
        scores.update(compute_metrics([task.headline], predictions.numpy(), labels.numpy()))
    result = {"eval_loss": loss.item(), **scores, "eval_examples": len(labels)}
    return {f"{prefix}{k}": v for k, v in result.items()}
