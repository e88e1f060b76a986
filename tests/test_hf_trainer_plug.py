"""One line plugs every registry entry into transformers.Trainer: it trains and keeps our groups."""

import pytest
import torch
import transformers
from transformers import Trainer, TrainingArguments

from finetune_opt.optim import REGISTRY, describe_optimizer, trainer_optimizer_cls_and_kwargs, trainer_optimizers


class FixedBatches(torch.utils.data.Dataset):
    def __init__(self, n=32, seq=8):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 99, (n, seq), generator=g)
        self.labels = (self.ids[:, 0] > 50).long()  # learnable from the first token

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=37, num_labels=2)
    return transformers.BertForSequenceClassification(cfg)


def train(tmp_path, epochs=8, **plug):
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=epochs,
                             logging_steps=4, report_to=[], save_strategy="no", use_cpu=True,
                             lr_scheduler_type="constant",
                             weight_decay=0.5)  # must NOT reach our no-decay group
    trainer = Trainer(model=plug.pop("model"), args=args, train_dataset=FixedBatches(), **plug)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer, losses


@pytest.mark.parametrize("path", ["optimizers", "optimizer_cls_and_kwargs"])
def test_trainer_trains_with_factory(tmp_path, path):
    model = tiny_bert()
    hp = dict(lr=3e-3, weight_decay=0.01)
    if path == "optimizers":
        plug = dict(optimizers=trainer_optimizers("adamw_fused", model, **hp))
    else:
        plug = dict(optimizer_cls_and_kwargs=trainer_optimizer_cls_and_kwargs("adamw_fused", **hp))
    trainer, losses = train(tmp_path, model=model, **plug)
    assert losses[-1] < 0.5 * losses[0], losses
    groups = {g["group_name"]: g for g in trainer.optimizer.param_groups}
    assert groups["decay"]["weight_decay"] == 0.01 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(g["fused"] for g in groups.values())


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_entry_trains_through_the_trainer(tmp_path, name):
    """Through Trainer's own factory path, at 20x the entry's fine-tuning lr (a tiny model from
    scratch): the loss falls, and the groups' decay is ours, not args.weight_decay."""
    spec = REGISTRY[name]
    plug = trainer_optimizer_cls_and_kwargs(name, lr=20 * spec.default_lr, weight_decay=0.01)
    trainer, losses = train(tmp_path, model=tiny_bert(), optimizer_cls_and_kwargs=plug)
    assert losses[-1] < losses[0] - 0.02, losses
    decays = {g["weight_decay"] for g in trainer.optimizer.param_groups}
    assert decays == {0.0, 0.01}
    assert describe_optimizer(trainer.optimizer)["name"] == name
