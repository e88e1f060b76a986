"""The training loop every recipe shares: Accelerate set-up, optimizer from the registry, LR
schedule, gradient accumulation and clipping, checkpoint/resume, fault handling, and measurement
around each update."""

import itertools
import math
import os
import signal
import time
from contextlib import contextmanager

import torch
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, DistributedType, GradientAccumulationPlugin, TorchDynamoPlugin,
                               set_seed)
from tqdm.auto import tqdm
from transformers import get_scheduler

from finetune_opt.checkpoint import find_checkpoint, load_checkpoint, read_loop_state, save_checkpoint
from finetune_opt.config import RunConfig
from finetune_opt.errors import ConfigError, TrainingStopped
from finetune_opt.measure import (StepTimer, current_rss_bytes, optimizer_state_bytes, padding_share, peak_bytes,
                                  peak_memory, reset_peak_memory)
from finetune_opt.optim import create_optimizer, describe_optimizer, get_optimizer_spec
from finetune_opt.peft_setup import model_to_save


def make_accelerator(cfg: RunConfig) -> Accelerator:
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on CPU")
    if cfg.resume:
        find_checkpoint(cfg.resume)  # a wrong path fails before any work
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # also what makes torchrun on a CPU box use gloo
        mixed_precision=cfg.mixed_precision,
        # Count micro-batches ourselves: the loader is cycled, and an epoch end must not force a sync.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.grad_accum,
                                                                sync_with_dataloader=False),
        # Shuffle order = f(seed, epoch): the same on every rank, and reproducible on resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # Compiled in prepare(); dynamic shapes, so batches of new lengths do not recompile.
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", dynamic=True) if cfg.compile_model else None,
    )
    set_seed(cfg.seed)
    return accelerator


def _batches(loader, accelerator, consumed: int):
    """Micro-batches forever, starting after `consumed` of them (resume lands mid-epoch)."""
    epoch, offset = divmod(consumed, len(loader))
    while True:
        loader.set_epoch(epoch)
        yield from (accelerator.skip_first_batches(loader, offset) if offset else loader)
        epoch, offset = epoch + 1, 0


def _batch_size_and_tokens(batch) -> tuple[int, int, int]:
    """Examples, real tokens, and token positions computed (real + padding)."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None and "position_ids" in batch:  # packed (finetune_opt.packing): one example per position 0
        return int((batch["position_ids"] == 0).sum()), ids.numel(), ids.numel()
    return ids.shape[0], int(mask.sum()) if mask is not None else ids.numel(), ids.numel()


@contextmanager
def averaged_weights(optimizer, spec):
    """Schedule-free optimizers train on one iterate (y) and evaluate / checkpoint another (x, the
    average): switch to x inside, back to y after. A no-op for every other optimizer."""
    if spec.train_eval_modes:
        optimizer.eval()
    try:
        yield
    finally:
        if spec.train_eval_modes:
            optimizer.train()


def _lr_scheduler(cfg: RunConfig, optimizer, spec):
    if spec.owns_lr_schedule:  # schedule-free: no decay schedule; its warm-up is its own
        return get_scheduler("constant", optimizer)
    return get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps),
                         num_training_steps=cfg.max_steps)


@contextmanager
def _sigterm_requested():
    """Yields a callable: has SIGTERM arrived? (The loop then checkpoints and exits cleanly.)"""
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGTERM, previous)


def step_optimizer(optimizer, scheduler, scaler) -> bool:
    """One optimizer step; the LR schedule advances only if the parameters were updated.
    Under fp16, GradScaler skips overflowed steps. Accelerate's optimizer_step_was_skipped misses
    the skip when the optimizer handles AMP scaling itself, as fused AdamW does (accelerate#4242),
    so the backed-off scale is the signal we trust."""
    scale = scaler.get_scale() if scaler is not None else None
    optimizer.step()
    skipped = optimizer.step_was_skipped or (scaler is not None and scaler.get_scale() < scale)
    if not skipped:
        scheduler.step()
    return not skipped


def fit(cfg: RunConfig, accelerator: Accelerator, model, train_loader, evaluate, on_step=None) -> dict | None:
    """Train to cfg.max_steps optimizer updates, then `evaluate(model) -> {metric: value}`;
    `on_step()` is called after each update (benchmarks time with it). Returns the measurement
    part of results.json, or None if SIGTERM stopped the run."""
    spec = get_optimizer_spec(cfg.optimizer)
    if not spec.supports(cfg.implementation, accelerator.device.type):
        here = [i for i in spec.implementations if spec.supports(i, accelerator.device.type)]
        raise ConfigError(f"{cfg.optimizer} ({cfg.implementation}) does not run on {accelerator.device.type}; "
                          f"choose implementation one of: {', '.join(here) or 'none (another optimizer)'}")
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if sharded and spec.needs_whole_tensors:
        raise ConfigError(f"{cfg.optimizer} updates whole matrices and cannot step FSDP / DeepSpeed shards; "
                          f"use DDP (accelerate_configs/multi_gpu.yaml) or an elementwise optimizer")
    # Optimizer on the model, then both prepared in one call: FSDP2 and DeepSpeed need that, as
    # they replace the optimizer's parameters with the sharded ones.
    optimizer = create_optimizer(cfg.optimizer, model, implementation=cfg.implementation, **cfg.hyperparams)
    scheduler = _lr_scheduler(cfg, optimizer, spec)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us, once per real update

    checkpoint = find_checkpoint(cfg.resume) if cfg.resume else None
    start = read_loop_state(checkpoint)["step"] if checkpoint else 0
    consumed = start * cfg.grad_accum
    batches = _batches(train_loader, accelerator, consumed)
    if consumed % len(train_loader):
        # Starting a DataLoader iterator draws from the global RNG. Mid-epoch, the uninterrupted
        # run started this epoch's iterator before the checkpoint, so start it before the RNG
        # states are restored; then dropout masks match. (At an epoch boundary it starts after.)
        batches = itertools.chain([next(batches)], batches)
    loop = {"history": [], "nonfinite_skipped": 0, "overflow_skipped": 0}
    if checkpoint:  # optimizer.load_state_dict inside re-asserts the spec's fused/foreach flags
        loop = load_checkpoint(accelerator, checkpoint)
        del loop["step"]
        if spec.train_eval_modes:  # checkpoints hold the averaged weights x; training runs on y
            optimizer.train()
    before = evaluate(model) if cfg.eval_before_training and not checkpoint else None

    reset_peak_memory(accelerator.device)
    rss_before = current_rss_bytes()
    timer = StepTimer(accelerator.device, cfg.timing_warmup_steps)
    window = []
    progress = tqdm(total=cfg.max_steps, initial=start, disable=not accelerator.is_local_main_process, desc="train")
    train_start = time.perf_counter()
    model.train()
    with _sigterm_requested() as sigterm:
        for step in range(start + 1, cfg.max_steps + 1):
            timer.begin_step()
            samples = tokens = positions = 0
            losses = []
            for _ in range(cfg.grad_accum):
                batch = next(batches)
                n, t, p = _batch_size_and_tokens(batch)
                samples, tokens, positions = samples + n, tokens + t, positions + p
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    losses.append(loss.detach())
            # The norm is of the synchronised (all-reduced, unscaled) gradients; inf disables clipping.
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
            if grad_norm is None:  # DeepSpeed clips inside its engine and returns no norm
                grad_norm = torch.zeros((), device=accelerator.device)
            elif hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
                grad_norm = grad_norm.full_tensor()
            flags = torch.stack([~torch.isfinite(torch.stack(losses)).all() | ~torch.isfinite(grad_norm),
                                 torch.tensor(sigterm(), device=grad_norm.device)]).float()
            if accelerator.num_processes > 1:  # every rank must take the same branch
                flags = accelerator.reduce(flags, reduction="sum")
            nonfinite, stop = (bool(f) for f in flags.tolist())
            if nonfinite and accelerator.scaler is None:  # (fp16: GradScaler's overflow handling below)
                optimizer.zero_grad(set_to_none=True)
                loop["nonfinite_skipped"] += 1
                if loop["nonfinite_skipped"] > cfg.max_nonfinite_steps:
                    with averaged_weights(optimizer, spec):
                        path = save_checkpoint(accelerator, cfg.output_dir, step - 1, loop)
                    raise TrainingStopped(f"{loop['nonfinite_skipped']} steps had non-finite loss or gradients "
                                          f"(max_nonfinite_steps={cfg.max_nonfinite_steps}); stopped at step {step}, "
                                          f"state of step {step - 1} saved in {path}")
            else:
                timer.begin_optimizer()
                if not step_optimizer(optimizer, scheduler, accelerator.scaler):
                    loop["overflow_skipped"] += 1
                timer.end_optimizer()
                optimizer.zero_grad(set_to_none=True)
                window.append(torch.stack(losses).mean())
            timer.end_step(samples, tokens, positions)
            if on_step:
                on_step()

            if (step % cfg.log_every == 0 or step == cfg.max_steps) and window:
                mean_loss = accelerator.reduce(torch.stack(window).mean(), reduction="mean").item()
                loop["history"].append({"step": step, "loss": mean_loss, "lr": float(scheduler.get_last_lr()[0])})
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                window = []
            progress.update(1)
            if stop or (cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps):
                with averaged_weights(optimizer, spec):  # schedule-free checkpoints in eval mode
                    path = save_checkpoint(accelerator, cfg.output_dir, step, loop)
            if stop:
                accelerator.print(f"SIGTERM: stopped after step {step}; checkpoint {path}; "
                                  f"continue with resume={cfg.output_dir}")
                return None
    progress.close()
    train_seconds = time.perf_counter() - train_start

    eval_start = time.perf_counter()
    if spec.train_eval_modes:
        optimizer.eval()  # evaluate and save the averaged weights
    metrics = evaluate(model)
    timing = timer.summary()
    timing.update(train_seconds=train_seconds, eval_seconds=time.perf_counter() - eval_start)
    memory = peak_memory(accelerator.device)
    memory.update(rss_before_training_bytes=rss_before, optimizer_state_bytes=optimizer_state_bytes(optimizer))
    if cfg.save_final_model:
        _save_model(accelerator, model, os.path.join(cfg.output_dir, "model"), merge=cfg.merge_adapter)
    return {
        "optimizer": describe_optimizer(optimizer),
        "metrics": metrics,
        "metrics_before_training": before,
        "final_train_loss": loop["history"][-1]["loss"] if loop["history"] else None,
        "resumed_from_step": start or None,
        "skipped_steps": {"nonfinite": loop["nonfinite_skipped"], "fp16_overflow": loop["overflow_skipped"]},
        "timing": timing,
        "throughput": _global_throughput(accelerator, timer),
        "memory": memory,
        "per_rank": _per_rank(accelerator, timing, memory),
        "history": loop["history"],
    }


def _save_model(accelerator, model, path, merge=False):
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if merge:  # a PEFT adapter merged into its base: the state of the merged (plain) model
        unwrapped = model_to_save(unwrapped, merge=True)
        state_dict = unwrapped.state_dict()
    unwrapped.save_pretrained(path, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
                              state_dict=state_dict)


def _global_throughput(accelerator, timer) -> dict:
    """Samples and tokens summed over ranks, divided by the slowest rank's timed seconds."""
    local = torch.tensor([timer.samples, timer.tokens, timer.positions, sum(timer.step_s)], dtype=torch.float64,
                         device=accelerator.device)
    every = accelerator.gather(local[None]).view(-1, 4)
    samples, tokens, positions, _ = every.sum(0).tolist()
    seconds = every[:, 3].max().item()
    return {"processes": accelerator.num_processes,
            "samples_per_s": samples / seconds if seconds else None,
            "tokens_per_s": tokens / seconds if seconds else None,
            "padding_share": padding_share(tokens, positions)}


def _per_rank(accelerator, timing, memory) -> list[dict]:
    local = torch.tensor([timing["step_ms"]["median"] or 0.0, timing["optimizer_step_ms"]["median"] or 0.0,
                          float(peak_bytes(memory))], dtype=torch.float64, device=accelerator.device)
    every = accelerator.gather(local[None]).view(-1, 3).tolist()
    return [{"rank": r, "step_ms_median": s, "optimizer_step_ms_median": o, "peak_memory_bytes": int(m)}
            for r, (s, o, m) in enumerate(every)]
