"""The training loop every recipe shares. `fit` reads as its steps:

    set_up        optimizer from the registry, LR schedule, accelerator.prepare
    resume        the loop state and the micro-batch stream, from a checkpoint when asked
    train         TrainingStep after TrainingStep; logging, periodic checkpoints, stop on a signal
    finish        final evaluation, saved model, the Results

`TrainingStep` is one optimizer update in phases (micro-batch forward/backward, clipping, the
non-finite flag and stop agreement, the optimizer step), so one phase can change alone. A step
with NaN/inf loss or gradients is skipped, on the device where the optimizer can (train/skips.py).
"""

import itertools
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, DistributedType, GradientAccumulationPlugin, TorchDynamoPlugin,
                               set_seed)
from tqdm.auto import tqdm
from transformers import get_scheduler

from finetune_opt import distributed
from finetune_opt.train.checkpoint import (LoopState, defer_exit_during_save, find_checkpoint, load_checkpoint,
                                    read_loop_state, save_checkpoint)
from finetune_opt.errors import ConfigError, Interrupted
from finetune_opt.measure.timing import (StepTimer, current_rss_bytes, global_throughput, optimizer_state_bytes, per_rank,
                                  peak_memory, reset_peak_memory)
from finetune_opt.measure.memory import NO_PROBE, memory_breakdown, phase_probe
from finetune_opt.optim import OptimizerSpec, create_optimizer, describe_optimizer, get_optimizer_spec
from finetune_opt.optim.in_backward import refusal as in_backward_refusal
from finetune_opt.optim.in_backward import step_in_backward
from finetune_opt.optim.whole_tensors import step_on_whole_tensors
from finetune_opt.models.loading import enable_gradient_checkpointing
from finetune_opt.models.peft import model_to_save
from finetune_opt.measure.results import Results, new_results
from finetune_opt.train.run_dir import resume_changes
from finetune_opt.train.skips import SkipLedger, step_skipping_on_device
from finetune_opt.train.tracking import memory_in_use, tracking, trackers


def make_accelerator(cfg) -> Accelerator:
    if cfg.precision.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on CPU")
    if cfg.checkpoint.resume:
        find_checkpoint(cfg.checkpoint.resume)  # a wrong path fails before any work
    sharded = distributed.fsdp2_requested()
    plugin = distributed.fsdp_plugin() if sharded else None
    accelerator = Accelerator(
        cpu=distributed.device_type() == "cpu",  # also what makes torchrun on a CPU box use gloo
        mixed_precision=cfg.precision.mixed_precision,
        fsdp_plugin=plugin,
        # Count micro-batches ourselves: the loader is cycled, and an epoch end must not force a sync.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.loop.grad_accum,
                                                                sync_with_dataloader=False),
        # Shuffle order = f(seed, epoch): the same on every rank, and reproducible on resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=trackers(cfg.measure.log_with) or None,  # train.tracking; TensorBoard under output_dir/logs
        project_dir=cfg.output.output_dir,
        # Compiled in prepare(); dynamic shapes, so batches of new lengths do not recompile.
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", dynamic=True) if cfg.precision.compile_model else None,
    )
    if sharded:
        distributed.promote_to_fsdp(accelerator, plugin)  # a CPU box: Accelerate chose DDP (distributed.py)
    set_seed(cfg.loop.seed)
    return accelerator


def _batches(loader, accelerator, consumed: int):
    """Micro-batches forever, starting after `consumed` of them (resume lands mid-epoch)."""
    epoch, offset = divmod(consumed, len(loader))
    while True:
        loader.set_epoch(epoch)
        yield from (accelerator.skip_first_batches(loader, offset) if offset else loader)
        epoch, offset = epoch + 1, 0


def _batch_size_and_tokens(batch) -> tuple:
    """Examples, real tokens, and token positions computed (real + padding). A count that needs the
    batch's values stays a tensor on the device (reading it would wait for the device): the timer
    reads it when the engine logs."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None and "position_ids" in batch:  # packed (finetune_opt.data.packing): one example per position 0
        return (batch["position_ids"] == 0).sum(), ids.numel(), ids.numel()
    return ids.shape[0], mask.sum() if mask is not None else ids.numel(), ids.numel()


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


def _lr_scheduler(cfg, optimizer, spec):
    if spec.owns_lr_schedule:  # schedule-free: no decay schedule; its warm-up is its own
        return get_scheduler("constant", optimizer)
    loop = cfg.loop
    return get_scheduler(loop.scheduler, optimizer, num_warmup_steps=math.ceil(loop.warmup_ratio * loop.max_steps),
                         num_training_steps=loop.max_steps)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _stop_signals():
    """Yields a callable: the first SIGINT / SIGTERM received, or None. The loop then finishes its
    step, checkpoints and stops. A second signal exits at once (checkpoints are renamed into
    place, so the last complete one stays complete), or, during a save, once it is saved."""
    received = []

    def handler(signum, frame):
        if received and not defer_exit_during_save(signum):
            print(f"\n{signal.Signals(signum).name} again: exiting without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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


def fit(cfg, accelerator: Accelerator, model, train_loader, evaluate, on_step=None) -> Results:
    """Train to cfg.loop.max_steps optimizer updates, then `evaluate(model) -> {metric: value}`;
    `on_step()` is called after each update (benchmarks time with it). Returns the run's Results;
    raises Interrupted if SIGINT / SIGTERM stopped the run (after a checkpoint)."""
    run = set_up(cfg, accelerator, model, train_loader)
    state, batches, changes = resume(run)
    resumed_from_step = state.step or None
    before = evaluate(run.model) if cfg.loop.eval_before_training and not cfg.checkpoint.resume else None
    meter = Meter(run, state.step)
    with _stop_signals() as stop_signal, tracking(accelerator, cfg.model_dump()):
        train(run, state, batches, meter, stop_signal, on_step)  # raises Interrupted on a signal
        # A signal from here on lets the final evaluation finish: its results are the run's.
        return finish(run, state, meter, evaluate, metrics_before_training=before,
                      resumed_from_step=resumed_from_step, resumed_with_changes=changes or None)


@dataclass
class Training:
    """What set-up builds; every later step reads it."""
    cfg: object  # the run's config (finetune_opt.config, above this layer: not imported here)
    accelerator: Accelerator
    spec: OptimizerSpec
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer  # Accelerate's wrapper
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: torch.utils.data.DataLoader

    def save_checkpoint(self, state: LoopState) -> str:
        with averaged_weights(self.optimizer, self.spec):  # schedule-free checkpoints in eval mode
            return save_checkpoint(self.accelerator, self.cfg.output.output_dir, state, self.cfg.model_dump())


def _check_optimizer_runs_here(cfg, accelerator) -> OptimizerSpec:
    spec = get_optimizer_spec(cfg.optimizer.name)
    if not spec.supports(cfg.optimizer.implementation, accelerator.device.type):
        here = [i for i in spec.implementations if spec.supports(i, accelerator.device.type)]
        raise ConfigError(f"{cfg.optimizer.name} ({cfg.optimizer.implementation}) does not run on "
                          f"{accelerator.device.type}; "
                          f"choose implementation one of: {', '.join(here) or 'none (another optimizer)'}")
    if cfg.precision.optimizer_in_backward and accelerator.num_processes > 1:
        raise ConfigError(in_backward_refusal(spec, cfg.optimizer.implementation, grad_accum=1, max_grad_norm=None,
                                              mixed_precision="no", num_processes=accelerator.num_processes))
    return spec


def set_up(cfg, accelerator: Accelerator, model, train_loader) -> Training:
    spec = _check_optimizer_runs_here(cfg, accelerator)
    if cfg.precision.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    # Optimizer on the model, then both prepared in one call: FSDP2 and DeepSpeed need that, as
    # they replace the optimizer's parameters with the sharded ones.
    optimizer = create_optimizer(cfg.optimizer.name, model, implementation=cfg.optimizer.implementation,
                                 **cfg.optimizer.hyperparams)
    scheduler = _lr_scheduler(cfg, optimizer, spec)
    if accelerator.distributed_type == DistributedType.FSDP:
        distributed.set_wrap_units(accelerator, model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if spec.needs_whole_tensors and accelerator.distributed_type == DistributedType.FSDP:
        step_on_whole_tensors(optimizer.optimizer)  # Muon / Adafactor see whole matrices (optim/whole_tensors.py)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us, once per real update
    if cfg.precision.optimizer_in_backward:  # every parameter stepped by its gradient's hook (optim/in_backward.py)
        step_in_backward(optimizer.optimizer)
    return Training(cfg, accelerator, spec, model, optimizer, scheduler, train_loader)


def resume(run: Training) -> tuple[LoopState, Iterator, dict]:
    """The loop state, the micro-batch stream and the config changes since the checkpoint
    (run_dir.resume_changes refuses unsafe ones): fresh, or continuing cfg.checkpoint.resume's checkpoint."""
    cfg = run.cfg
    checkpoint = find_checkpoint(cfg.checkpoint.resume) if cfg.checkpoint.resume else None
    consumed = (read_loop_state(checkpoint).step if checkpoint else 0) * cfg.loop.grad_accum
    batches = _batches(run.train_loader, run.accelerator, consumed)
    if consumed % len(run.train_loader):
        # Starting a DataLoader iterator draws from the global RNG. Mid-epoch, the uninterrupted
        # run started this epoch's iterator before the checkpoint, so start it before the RNG
        # states are restored; then dropout masks match. (At an epoch boundary it starts after.)
        batches = itertools.chain([next(batches)], batches)
    if not checkpoint:
        return LoopState(), batches, {}
    changes = resume_changes(cfg, checkpoint)
    state = load_checkpoint(run.accelerator, checkpoint)  # optimizer.load_state_dict re-asserts the spec's flags
    if run.spec.train_eval_modes:  # checkpoints hold the averaged weights x; training runs on y
        run.optimizer.train()
    return state, batches, changes


@dataclass
class StepOutcome:
    step: int
    loss: torch.Tensor       # mean micro-batch loss (left out of the log if the step was skipped)
    grad_norm: torch.Tensor  # of the synchronised gradients, before clipping (0 with the step in backward)
    stop: bool               # a stop signal arrived on some rank: every rank stops after this step


def skips_on_device(run: Training) -> bool:
    """Whether a non-finite step can be skipped by the optimizer's kernels (train/skips.py). Not
    under fp16 (GradScaler passes its own found_inf), with the step in backward (the hooks have
    stepped already), or under DeepSpeed (its engine steps its own optimizer)."""
    cfg = run.cfg
    return (run.spec.implementations[cfg.optimizer.implementation].takes_found_inf
            and run.accelerator.scaler is None and not cfg.precision.optimizer_in_backward
            and run.accelerator.distributed_type != DistributedType.DEEPSPEED)


class TrainingStep:
    """One optimizer update: `micro_batch` (forward + backward) grad_accum times, `clip_gradients`,
    `nonfinite` (NaN/inf on some rank: the same flag on every rank), `update` (optimizer step and
    LR schedule; skipped for a non-finite step). Each phase is a method, so an option can replace
    or instrument one alone. The skips are counted by `ledger` (train/skips.py)."""

    def __init__(self, run: Training, timer: StepTimer, ledger: SkipLedger):
        self.run, self.timer, self.ledger = run, timer, ledger
        self.on_device = skips_on_device(run)
        self.probe = NO_PROBE  # train() sets a memory probe for the one step it measures
        self.batch_shape = None

    def __call__(self, step: int, batches: Iterator, stop_requested) -> StepOutcome:
        """`stop_requested()` is asked after the backward passes, so a signal during them stops this step."""
        run = self.run
        self.timer.begin_step()
        samples = tokens = positions = 0
        losses = []
        for _ in range(run.cfg.loop.grad_accum):
            batch = next(batches)
            n, t, p = _batch_size_and_tokens(batch)
            samples, tokens, positions = samples + n, tokens + t, positions + p
            losses.append(self.micro_batch(batch))
        losses = torch.stack(losses)
        self.probe.note_gradients(run.model)  # before they are freed (in backward: none left)
        grad_norm = self.clip_gradients()
        nonfinite = self.nonfinite(losses, grad_norm)
        stop = distributed.any_rank(stop_requested())
        self.ledger.settle()  # the previous step's skip: its schedule advance comes before this update
        if self.on_device:
            self.update_unless(nonfinite)
            self.ledger.defer(step, nonfinite)
        elif run.accelerator.scaler is None and nonfinite.item():  # (fp16: GradScaler's overflow handling)
            self.ledger.record(step, nonfinite=True, updated=False)
        else:
            self.ledger.record(step, nonfinite=False, updated=self.update())
        run.optimizer.zero_grad(set_to_none=True)
        self.timer.end_step(samples, tokens, positions)
        return StepOutcome(step=step, loss=losses.mean(), grad_norm=grad_norm, stop=stop)

    def micro_batch(self, batch) -> torch.Tensor:
        self.batch_shape = tuple(batch["input_ids"].shape)
        with self.run.accelerator.accumulate(self.run.model):
            with self.probe.phase("forward"):
                loss = self.run.model(**batch).loss
            # With the step in backward, backward *is* the update: a NaN/inf loss must not reach it.
            if not (self.run.cfg.precision.optimizer_in_backward and not torch.isfinite(loss).item()):
                with self.probe.phase("backward"):
                    self.run.accelerator.backward(loss)
        return loss.detach()

    def clip_gradients(self) -> torch.Tensor:
        """The norm of the synchronised (all-reduced, unscaled) gradients; max_grad_norm None: no clipping."""
        accelerator = self.run.accelerator
        if self.run.cfg.precision.optimizer_in_backward:  # every gradient was applied and freed during backward
            # (clip_grad_norm_ of no gradients is a CPU zero, which a CUDA run cannot stack with its flags)
            return torch.zeros((), device=accelerator.device)
        grad_norm = accelerator.clip_grad_norm_(self.run.model.parameters(),
                                                self.run.cfg.loop.max_grad_norm or math.inf)
        if grad_norm is None:  # DeepSpeed clips inside its engine and returns no norm
            return torch.zeros((), device=accelerator.device)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            return grad_norm.full_tensor()
        return grad_norm

    def nonfinite(self, losses: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """A device bool: NaN/inf loss or gradients on some rank (every rank must take the same branch)."""
        flag = ~torch.isfinite(losses).all() | ~torch.isfinite(grad_norm)
        if self.run.accelerator.num_processes > 1:
            flag = self.run.accelerator.reduce(flag.float(), reduction="sum") > 0
        return flag

    def update(self) -> bool:
        if self.run.cfg.precision.optimizer_in_backward:  # the hooks stepped every parameter during backward
            self.run.scheduler.step()
            return True
        self.timer.begin_optimizer()
        with self.probe.phase("optimizer_step"):
            updated = step_optimizer(self.run.optimizer, self.run.scheduler, self.run.accelerator.scaler)
        self.timer.end_optimizer()
        return updated

    def update_unless(self, nonfinite: torch.Tensor):
        """The optimizer step, a no-op on the device where `nonfinite` is set; the LR schedule
        advances when the ledger reads the flag back."""
        self.timer.begin_optimizer()
        with self.probe.phase("optimizer_step"):
            step_skipping_on_device(self.run.optimizer, nonfinite)
        self.timer.end_optimizer()


class Meter:
    """Step times (StepTimer), peak memory, the window of losses, gradient norms and step times
    between log lines (into history, and to the trackers), the progress bar."""

    def __init__(self, run: Training, start: int):
        self.run = run
        reset_peak_memory(run.accelerator.device)
        self.rss_before = current_rss_bytes()
        self.timer = StepTimer(run.accelerator.device, run.cfg.measure.timing_warmup_steps)
        self.window = []  # (step, loss, gradient norm) since the last log line, on the device
        self.progress = tqdm(total=run.cfg.loop.max_steps, initial=start, desc="train",
                             disable=not run.accelerator.is_local_main_process)
        self.train_start = time.perf_counter()
        self.memory_breakdown = None  # finetune_opt.measure.memory's, from the step train() probes

    def logs_at(self, step: int) -> bool:
        return step % self.run.cfg.measure.log_every == 0 or step == self.run.cfg.loop.max_steps

    def after_step(self, state: LoopState, outcome: StepOutcome, skipped: set):
        """Every log_every steps (and the last): the mean loss since the last log line, of the steps
        not `skipped` as non-finite, into history; it, the lr, the mean gradient norm and step time,
        and the memory in use to the trackers. Only then are the loss, gradient norm and step times
        read back from the device (the skips are settled by then: train())."""
        self.window.append((outcome.step, outcome.loss, outcome.grad_norm))
        if self.logs_at(state.step):
            kept = [(loss, norm) for step, loss, norm in self.window if step not in skipped]
            self.window = []
            if kept:
                self.log(state, *zip(*kept))
        self.progress.update(1)

    def log(self, state: LoopState, losses: tuple, grad_norms: tuple):
        accelerator = self.run.accelerator
        step_seconds = self.timer.flush()
        mean_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        lr = float(self.run.scheduler.get_last_lr()[0])
        state.history.append({"step": state.step, "loss": mean_loss, "lr": lr})
        accelerator.log({"train/loss": mean_loss, "train/lr": lr,
                         "train/grad_norm": torch.stack(grad_norms).float().mean().item(),
                         "train/step_ms": 1e3 * sum(step_seconds) / len(step_seconds),
                         "train/memory_mib": memory_in_use(accelerator.device) / 2**20}, step=state.step)
        self.progress.set_postfix(loss=f"{mean_loss:.4f}")

    def close(self) -> float:
        """Seconds since training started."""
        self.progress.close()
        return time.perf_counter() - self.train_start


def train(run: Training, state: LoopState, batches: Iterator, meter: Meter, stop_signal, on_step=None):
    """Steps state.step + 1 .. max_steps. A stop signal (on any rank) ends it after the step and a
    checkpoint, with Interrupted."""
    cfg = run.cfg
    ledger = SkipLedger(run, state)
    training_step = TrainingStep(run, meter.timer, ledger)
    # Memory is measured on the last warm-up step: the optimizer state exists by then, and the
    # CPU probe's profiler slows that step, which the timings exclude anyway.
    # Under DDP not before this process's third step: the second forward rebuilds the reducer's
    # gradient buckets once (DistributedDataParallel._pre_forward -> reducer._rebuild_buckets), allocating
    # new ones (the gradients' size) while the old ones, allocated before the CPU profiler started, are
    # freed unseen by it (it records no size for them): that step's forward would count the buckets as
    # activations (a 2-layer Llama, 2 gloo ranks: 1.42x the prediction, 1.00x on step 3). With
    # timing_warmup_steps < 3 that moves the probe onto a timed step.
    first = 3 if isinstance(run.model, torch.nn.parallel.DistributedDataParallel) else 1
    probe_step = state.step + min(max(first, cfg.measure.timing_warmup_steps), cfg.loop.max_steps - state.step)
    probe_step = max(probe_step, state.step + 1)
    run.model.train()
    for step in range(state.step + 1, cfg.loop.max_steps + 1):
        probed = cfg.measure.memory_breakdown is not False and step == probe_step
        training_step.probe = phase_probe(run.accelerator.device) if probed else NO_PROBE
        with training_step.probe.step():
            outcome = training_step(step, batches, lambda: stop_signal() is not None)
        if probed:
            meter.memory_breakdown = memory_breakdown(run, training_step)
        every = cfg.checkpoint.save_every
        save = outcome.stop or (every and step % every == 0 and step < cfg.loop.max_steps)
        if save or meter.logs_at(step):
            ledger.settle()  # the log line, checkpoint and results report this step's schedule and counts
        state.step = step
        if on_step:
            on_step()
        meter.after_step(state, outcome, skipped=ledger.nonfinite_steps)
        if save:
            path = run.save_checkpoint(state)
        if outcome.stop:
            signum = stop_signal() or signal.SIGTERM  # another rank's signal: SIGTERM's exit code
            meter.close()
            raise Interrupted(f"{signal.Signals(signum).name}: stopped after step {step}; checkpoint {path}; "
                              f"continue with resume={cfg.output.output_dir}", exit_code=128 + signum)


def finish(run: Training, state: LoopState, meter: Meter, evaluate, **results) -> Results:
    """Evaluate (schedule-free: the averaged weights), measure, save the final model; the Results."""
    cfg, accelerator = run.cfg, run.accelerator
    train_seconds = meter.close()
    eval_start = time.perf_counter()
    if run.spec.train_eval_modes:
        run.optimizer.eval()  # evaluate and save the averaged weights
    metrics = evaluate(run.model)
    timing = meter.timer.summary()
    timing.update(train_seconds=train_seconds, eval_seconds=time.perf_counter() - eval_start)
    memory = peak_memory(accelerator.device)
    memory.update(rss_before_training_bytes=meter.rss_before, optimizer_state_bytes=optimizer_state_bytes(run.optimizer),
                  breakdown=meter.memory_breakdown)
    if cfg.checkpoint.save_final_model:
        _save_model(accelerator, run.model, os.path.join(cfg.output.output_dir, "model"), merge=cfg.sft.merge_adapter)
    return new_results(
        cfg, accelerator, optimizer=describe_optimizer(run.optimizer), metrics=metrics,
        final_train_loss=state.history[-1]["loss"] if state.history else None,
        skipped_steps={"nonfinite": state.nonfinite_skipped, "fp16_overflow": state.overflow_skipped},
        timing=timing, throughput=global_throughput(accelerator, meter.timer), memory=memory,
        distribution=distributed.describe(accelerator),
        per_rank=per_rank(accelerator, timing, memory), history=state.history, **results)


def _save_model(accelerator, model, path, merge=False):
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    _share_tied_tensors(unwrapped, state_dict)
    if merge:  # a PEFT adapter merged into its base: the state of the merged (plain) model
        unwrapped = model_to_save(unwrapped, merge=True)
        state_dict = _whole_state_dict(unwrapped, accelerator)
    unwrapped.save_pretrained(path, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
                              state_dict=state_dict)


def _whole_state_dict(model, accelerator) -> dict:
    """The model's state with whole tensors: under FSDP2 gathered from every rank (a collective:
    all ranks call it) onto the main process's CPU; otherwise the model's own."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _share_tied_tensors(model, state_dict: dict):
    """A gathered (FSDP2) state dict holds a separate copy of each tied parameter (GPT-2's wte and
    lm_head); pointing them at one tensor lets save_pretrained store it once, as it does unsharded."""
    first = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in state_dict and id(param) in first:
            state_dict[name] = state_dict[first[id(param)]]
        first.setdefault(id(param), name)
