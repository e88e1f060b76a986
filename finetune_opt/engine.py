"""The training loop every recipe shares: Accelerate set-up, optimizer from the registry,
LR schedule, gradient accumulation and clipping, and measurement around each update."""

import itertools
import math
import time

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from finetune_opt.config import RunConfig
from finetune_opt.errors import ConfigError
from finetune_opt.measure import (StepTimer, current_rss_bytes, optimizer_state_bytes, peak_memory,
                                  reset_peak_memory)
from finetune_opt.optim import create_optimizer


def make_accelerator(cfg: RunConfig) -> Accelerator:
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on CPU")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # also what makes torchrun on a CPU box use gloo
        mixed_precision=cfg.mixed_precision,
        # Count micro-batches ourselves: the loader is cycled, and an epoch end must not force a sync.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.grad_accum,
                                                                sync_with_dataloader=False),
    )
    set_seed(cfg.seed)
    return accelerator


def _forever(loader):
    for epoch in itertools.count():
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        yield from loader


def _batch_size_and_tokens(batch) -> tuple[int, int]:
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    return ids.shape[0], int(mask.sum()) if mask is not None else ids.numel()


def fit(cfg: RunConfig, accelerator: Accelerator, model, train_loader, evaluate) -> dict:
    """Train for cfg.max_steps optimizer updates, then `evaluate(model) -> {metric: value}`.
    Returns the measurement part of results.json."""
    model = accelerator.prepare(model)  # on its device first: fused kernels check where params live
    optimizer = create_optimizer(cfg.optimizer, model, implementation=cfg.implementation, **cfg.hyperparams)
    spec = optimizer.finetune_opt_spec
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps),
                              num_training_steps=cfg.max_steps)
    optimizer, train_loader = accelerator.prepare(optimizer, train_loader)

    before = evaluate(model) if cfg.eval_before_training else None
    reset_peak_memory(accelerator.device)
    rss_before = current_rss_bytes()
    timer = StepTimer(accelerator.device, cfg.timing_warmup_steps)
    history, window = [], []
    batches = _forever(train_loader)
    progress = tqdm(total=cfg.max_steps, disable=not accelerator.is_local_main_process, desc="train")
    train_start = time.perf_counter()
    model.train()
    for step in range(1, cfg.max_steps + 1):
        timer.begin_step()
        samples = tokens = 0
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            n, t = _batch_size_and_tokens(batch)
            samples, tokens = samples + n, tokens + t
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                window.append(loss.detach())
                if accelerator.sync_gradients:
                    if cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    timer.begin_optimizer()
                    optimizer.step()
                    timer.end_optimizer()
                    if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the schedule
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
        timer.end_step(samples, tokens)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            mean_loss = accelerator.reduce(torch.stack(window).mean(), reduction="mean").item()
            history.append({"step": step, "loss": mean_loss, "lr": float(scheduler.get_last_lr()[0])})
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            window = []
        progress.update(1)
    progress.close()
    train_seconds = time.perf_counter() - train_start

    eval_start = time.perf_counter()
    metrics = evaluate(model)
    timing = timer.summary()
    timing.update(train_seconds=train_seconds, eval_seconds=time.perf_counter() - eval_start)
    memory = peak_memory(accelerator.device)
    memory.update(rss_before_training_bytes=rss_before, optimizer_state_bytes=optimizer_state_bytes(optimizer))
    return {
        "optimizer": {**spec, "class": type(optimizer.optimizer).__name__},
        "metrics": metrics,
        "metrics_before_training": before,
        "final_train_loss": history[-1]["loss"],
        "timing": timing,
        "throughput": _global_throughput(accelerator, timer),
        "memory": memory,
        "per_rank": _per_rank(accelerator, timing, memory),
        "history": history,
    }


def _global_throughput(accelerator, timer) -> dict:
    """Samples and tokens summed over ranks, divided by the slowest rank's timed seconds."""
    local = torch.tensor([timer.samples, timer.tokens, sum(timer.step_s)], dtype=torch.float64,
                         device=accelerator.device)
    every = accelerator.gather(local[None]).view(-1, 3)
    seconds = every[:, 2].max().item()
    return {"processes": accelerator.num_processes,
            "samples_per_s": every[:, 0].sum().item() / seconds if seconds else None,
            "tokens_per_s": every[:, 1].sum().item() / seconds if seconds else None}


def _per_rank(accelerator, timing, memory) -> list[dict]:
    peak = memory.get("peak_allocated_bytes", memory.get("peak_rss_bytes"))
    local = torch.tensor([timing["step_ms"]["median"] or 0.0, timing["optimizer_step_ms"]["median"] or 0.0,
                          float(peak)], dtype=torch.float64, device=accelerator.device)
    every = accelerator.gather(local[None]).view(-1, 3).tolist()
    return [{"rank": r, "step_ms_median": s, "optimizer_step_ms_median": o, "peak_memory_bytes": int(m)}
            for r, (s, o, m) in enumerate(every)]
