"""One line plugs every registry entry into transformers.Trainer: it trains and keeps our groups."""

import pytest
import torch
import transformers
from transformers import Trainer, TrainingArguments

from finetune_opt.optim import REGISTRY, describe_optimizer, runs_on, trainer_optimizer_cls_and_kwargs, trainer_optimizers


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


@pytest.mark.parametrize("name", runs_on("cpu"))  # (paged_adamw_8bit: CUDA only, refused here)
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


# --- schedule-free: what the Trainer saves is the averaged weights x --------------------------

def _plugged(path, name, model, **hp):
    if path == "optimizers":
        return dict(optimizers=trainer_optimizers(name, model, **hp))
    return dict(optimizer_cls_and_kwargs=trainer_optimizer_cls_and_kwargs(name, **hp))


def _checkpointing_trainer(out, path, name, model):
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=6, save_steps=3,
                             save_strategy="steps", logging_steps=3, report_to=[], use_cpu=True,
                             lr_scheduler_type="constant", seed=0)
    spec = REGISTRY[name]
    return Trainer(model=model, args=args, train_dataset=FixedBatches(),
                   **_plugged(path, name, model, lr=20 * spec.default_lr, weight_decay=0.01))


def _max_diff(weights: dict, model) -> float:
    return max((weights[n] - p.detach()).abs().max().item() for n, p in model.named_parameters())


@pytest.mark.parametrize("name", [n for n, s in REGISTRY.items() if s.train_eval_modes])
@pytest.mark.parametrize("path", ["optimizers", "optimizer_cls_and_kwargs"])
def test_train_eval_mode_optimizers_save_and_resume_the_averaged_weights(tmp_path, path, name):
    """Checkpoints and save_model hold x (what eval() puts in the model), not the training
    iterate y (8.9e-4 apart here before the plug hooked the model); a run
    resumed from step 3 ends bit-identical to the uninterrupted one."""
    from safetensors.torch import load_file

    trainer = _checkpointing_trainer(tmp_path / "a", path, name, tiny_bert())
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    checkpoint = load_file(str(tmp_path / "a" / "checkpoint-6" / "model.safetensors"))
    final = load_file(str(tmp_path / "final" / "model.safetensors"))
    trainer.optimizer.eval()  # x in the model, as trainer.evaluate() would put it
    x = trainer.model
    assert _max_diff(checkpoint, x) == 0 and _max_diff(final, x) == 0
    y_distance = max((z - p.detach()).abs().max().item() for p in x.parameters()
                     for z in [trainer.optimizer.state[p]["z"]] if p.requires_grad)
    assert y_distance > 1e-4  # x, y and z are apart: the equalities above are not vacuous

    resumed = _checkpointing_trainer(tmp_path / "b", path, name, tiny_bert())
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert _max_diff(load_file(str(tmp_path / "b" / "checkpoint-6" / "model.safetensors")), x) == 0
