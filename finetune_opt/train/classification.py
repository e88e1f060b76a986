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


def load_classification(task_name: str, section, seed: int, tokenizer, main_process_first) -> TaskData:
    """Tokenized splits of what the config's data section names (+ "train_eval": a slice of the
    training subset seeded from `seed`, for the train-vs-dev gap, when train_eval_examples is set);
    labels in column "labels"."""
    data = load_task(task_name, section, seed)
    if section.metric and data.task.problem_type != REGRESSION and data.num_labels != 2:  # validation tried 2 classes
        check_metrics(section.metric, "classification", data.num_labels)
    splits = data.splits
    if section.train_eval_examples:
        n = min(section.train_eval_examples, len(splits["train"]))
        splits["train_eval"] = splits["train"].shuffle(seed=seed + 1).select(range(n))

    def tokenize(batch):
        return tokenizer(*[batch[c] for c in data.text_columns], truncation=True, max_length=section.max_length)

    with main_process_first():  # tokenize once; other ranks read the cache
        data.splits = splits.map(tokenize, batched=True, remove_columns=list(data.text_columns)) \
            .rename_column("label", "labels")
    return data


def classification_model(model_section, data: TaskData, last_layer_cls_only: bool | None):
    """A sequence-classification model with the task's head, from the config's model section: num_labels
    from the task or the data, MSE loss for regression, and the class names in config.id2label (so a
    saved model predicts names); its last layer computes [CLS] only when last_layer_cls_only (null:
    where the model supports it)."""
    names = {} if data.label_names is None else {"id2label": dict(enumerate(data.label_names)),
                                                 "label2id": {n: i for i, n in enumerate(data.label_names)}}
    model = load_model(model_section.name, head="classification", model_config=model_section.config,
                       num_labels=data.num_labels, problem_type=data.task.problem_type, **names)
    cls_only = last_layer_cls_only
    if cls_only is None:  # a Hub model, whose type validation could not read (its results.json keeps null)
        cls_only = cls_only_last_layer.model_refusal(model) is None
    if cls_only:
        cls_only_last_layer.apply(model)
    return model


def collator(tokenizer, precision):
    """Padding per batch; `precision`: the config's precision section."""
    # Multiples of 8: few distinct shapes for a compiled model, and tensor-core tiles under mixed precision
    # on a GPU. Not on CPU: SST-2's sentences are 13 tokens on average, so 8s would add a fifth more work.
    bucket = precision.compile_model or (precision.mixed_precision != "no" and torch.cuda.is_available())
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
