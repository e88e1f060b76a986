"""The same GLUE job as finetune_glue.py, trained by transformers.Trainer with a registered
optimizer plugged in one line; results.json has the same schema, so the study compares engines.

    python recipes/trainer_glue.py --config sst2 optimizer=adamw_fused output_dir=runs/sst2-trainer

Checkpointing is the Trainer's own business here (resume/save_every belong to the Accelerate recipe).
"""

import math
import os
from types import SimpleNamespace

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from finetune_opt.train.classification import (classification_model, collator, eval_splits, load_classification,
                                         metric_prefix, task_metrics)
from finetune_opt.recipes.entry import recipe_main
from finetune_opt.errors import ConfigError, refuse_unused
from finetune_opt.measure.timing import (StepTimer, current_rss_bytes, global_throughput, optimizer_state_bytes, per_rank,
                                  peak_memory, reset_peak_memory)
from finetune_opt.models.loading import load_tokenizer
from finetune_opt.optim import describe_optimizer, get_optimizer_spec, trainer_optimizer_cls_and_kwargs
from finetune_opt.measure.results import new_results, save_results
from finetune_opt.tasks import check_recipe
from finetune_opt.train.tracking import trainer_reporting


# Engine features this recipe does not implement, with the value that leaves them off.
TRAINER_DOES_NOT = {"save_final_model": False, "eval_before_training": False, "optimizer_in_backward": False}


class Measure(TrainerCallback):
    """Step and optimizer-step times with the engine's StepTimer; each step runs from the end of
    the previous one, so data loading and the Trainer's per-step work count, as in our engine.
    Samples and tokens are this rank's (the Trainer's token count is global: divided by the ranks)."""

    def __init__(self, cfg, device):
        self.timer = StepTimer(device, cfg.measure.timing_warmup_steps)
        self.samples_per_step = cfg.loop.batch_size * cfg.loop.grad_accum
        self.tokens_seen = 0
        self.positions = self.positions_seen = 0  # token positions (real + padding), counted by PositionCounting
        self.world_size = 1

    def on_train_begin(self, args, state, control, **kw):
        self.world_size = args.world_size
        self.timer.begin_step()

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.timer.begin_optimizer()

    def on_optimizer_step(self, args, state, control, **kw):
        self.timer.end_optimizer()

    def on_step_end(self, args, state, control, **kw):
        self.timer.end_step(self.samples_per_step, (state.num_input_tokens_seen - self.tokens_seen) // self.world_size,
                            self.positions - self.positions_seen)
        self.tokens_seen, self.positions_seen = state.num_input_tokens_seen, self.positions
        self.timer.begin_step()
        if state.global_step == state.max_steps:  # the last step logs, as the engine's does: its loss is
            control.should_log = True              # the summary's train loss (else '-' unless log_every divides)


class PositionCounting(Trainer):
    """The Trainer, counting the token positions (real + padding) of each training micro-batch: the
    padding share in results.json. (Counting in the collator would be a batch off: the loader
    prefetches.) This process's batches; with several processes each counts its own."""

    def __init__(self, *args, measure: Measure, **kwargs):
        super().__init__(*args, **kwargs)
        self.measure = measure

    def training_step(self, model, inputs, *args, **kwargs):
        self.measure.positions += inputs["input_ids"].numel()
        return super().training_step(model, inputs, *args, **kwargs)


def _refuse_what_the_trainer_does_not_do(cfg):
    """Settings the engine's recipes honour and the Trainer would silently ignore."""
    if cfg.checkpoint.resume or cfg.checkpoint.save_every:
        raise ConfigError("the Trainer recipe does not take resume/save_every; use recipes/finetune_glue.py")
    refuse_unused(SimpleNamespace(**cfg.flat()), TRAINER_DOES_NOT,
                  "is not done by the Trainer recipe (recipes/finetune_glue.py does it)")
    if cfg.measure.memory_breakdown:  # (null and false: not measured)
        raise ConfigError("memory_breakdown is not done by the Trainer recipe (recipes/finetune_glue.py does it): "
                          "set memory_breakdown=null")
    if cfg.checkpoint.max_nonfinite_steps is not None:  # the Trainer steps on NaN/inf losses; the engine skips them
        raise ConfigError("max_nonfinite_steps is not done by the Trainer recipe (it does not skip non-finite "
                          "steps; recipes/finetune_glue.py does): set max_nonfinite_steps=null")


def run(cfg):
    task = check_recipe(cfg.task, "trainer_glue.py")
    _refuse_what_the_trainer_does_not_do(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    report_to, tracker_callbacks = trainer_reporting(cfg.measure.log_with, cfg.output.output_dir)
    args = TrainingArguments(
        output_dir=os.path.join(cfg.output.output_dir, "trainer"), per_device_train_batch_size=cfg.loop.batch_size,
        per_device_eval_batch_size=cfg.loop.eval_batch_size, gradient_accumulation_steps=cfg.loop.grad_accum,
        max_steps=cfg.loop.max_steps, warmup_steps=math.ceil(cfg.loop.warmup_ratio * cfg.loop.max_steps),
        max_grad_norm=cfg.loop.max_grad_norm or 0.0, bf16=cfg.precision.mixed_precision == "bf16",
        fp16=cfg.precision.mixed_precision == "fp16", seed=cfg.loop.seed, logging_steps=cfg.measure.log_every,
        save_strategy="no", eval_strategy="no", report_to=report_to,
        use_cpu=not torch.cuda.is_available(), include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length" if cfg.precision.group_by_length else "random",
        torch_compile=cfg.precision.compile_model, gradient_checkpointing=cfg.precision.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # schedule-free optimizers take no LR schedule (their warm-up is their own)
        lr_scheduler_type="constant" if get_optimizer_spec(cfg.optimizer.name).owns_lr_schedule else cfg.loop.scheduler,
        learning_rate=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)  # informational: our factory owns the groups
    data = load_classification(cfg.task, cfg.data, cfg.loop.seed, tokenizer, args.main_process_first)
    torch.manual_seed(cfg.loop.seed)
    model = classification_model(cfg.model, data, cfg.precision.last_layer_cls_only)
    measure = Measure(cfg, args.device)
    trainer = PositionCounting(model=model, args=args, train_dataset=data.splits["train"],
                               data_collator=collator(tokenizer, cfg.precision), measure=measure,
                               optimizer_cls_and_kwargs=trainer_optimizer_cls_and_kwargs(
                                   cfg.optimizer.name, implementation=cfg.optimizer.implementation,
                                   **cfg.optimizer.hyperparams),
                               callbacks=[measure, *tracker_callbacks])

    reset_peak_memory(args.device)
    rss_before = current_rss_bytes()
    train_output = trainer.train()

    def evaluate(split):
        out = trainer.predict(data.splits[split])
        return task_metrics(task, torch.as_tensor(out.predictions), torch.as_tensor(out.label_ids), metric_prefix(split),
                            cfg.data.metric)

    metrics = {k: v for split in eval_splits(data) for k, v in evaluate(split).items()}
    timing = measure.timer.summary()
    timing.update(train_seconds=train_output.metrics["train_runtime"], eval_seconds=None)
    memory = peak_memory(args.device)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # inside Accelerate's wrapper
    memory.update(rss_before_training_bytes=rss_before, optimizer_state_bytes=optimizer_state_bytes(optimizer))
    history = [{"step": h["step"], "loss": h["loss"], "lr": h["learning_rate"]}
               for h in trainer.state.log_history if "loss" in h]
    accelerator = trainer.accelerator  # per-rank figures gathered as the engine gathers them
    results = new_results(
        cfg, accelerator, optimizer={**describe_optimizer(optimizer), "engine": "trainer"}, metrics=metrics,
        final_train_loss=history[-1]["loss"] if history else None, timing=timing,
        throughput=global_throughput(accelerator, measure.timer), memory=memory,
        per_rank=per_rank(accelerator, timing, memory), history=history)
    save_results(cfg, accelerator, results)


def main(argv=None):
    recipe_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
