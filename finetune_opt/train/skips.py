"""Skipped updates: decided on the device, accounted for on the host one step later.

A step whose loss or gradients are NaN/inf on some rank must leave the parameters and optimizer
state alone, must not advance the LR schedule, and is counted (too many stop the run). Reading
that flag back before the update would wait for every kernel queued so far, on every step: on a
GPU the host stops running ahead, and the device idles while the next step is launched.

So where the optimizer can skip on the device (its implementation takes GradScaler's `found_inf`
tensor: torch's fused Adam/AdamW/SGD, compiled Lion, fused Adafactor), the flag goes to the
optimizer as a tensor, and a copy of it to pinned host memory behind an event. The host reads
that copy in the next step, just before that step's update: the copy was queued ahead of the whole
forward and backward the host has launched since, so the read does not drain the queue. Only then
does it advance the schedule and count. Logging, checkpoint, stop and final steps read at once (they report the
schedule and counts). Every other optimizer reads the flag before its update: one wait a step.
"""

import torch

from finetune_opt.errors import TrainingStopped
from finetune_opt.measure.timing import event_class


class HostCopy:
    """A 0-dim device bool copied into host memory without waiting; `read` waits for the copy only."""

    def __init__(self, device: torch.device):
        events = event_class(device)
        self.tensor = torch.zeros((), dtype=torch.bool, pin_memory=events is not None)
        self.array = self.tensor.numpy()  # the same host memory, read as memory (no tensor call)
        self.event = None if events is None else events()

    def copy(self, flag: torch.Tensor):
        self.tensor.copy_(flag, non_blocking=True)
        if self.event is not None:
            self.event.record()

    def read(self) -> bool:
        if self.event is not None:
            self.event.synchronize()
        return bool(self.array)


def step_skipping_on_device(optimizer, nonfinite: torch.Tensor):
    """One optimizer step that changes nothing when `nonfinite` is set, decided by the kernels:
    the flag is passed as GradScaler passes its own (an attribute of the torch optimizer that its
    step reads)."""
    inner = optimizer.optimizer  # inside Accelerate's wrapper
    inner.found_inf = nonfinite.float()  # 0-dim, as the step counters it is subtracted from
    try:
        optimizer.step()
    finally:
        del inner.found_inf


class SkipLedger:
    """The loop state's skip counts, and the LR schedule's advance for each real update: recorded
    at once (`record`), or one step late (`defer`, then `settle`) for a skip decided on the device."""

    def __init__(self, run, state):
        self.run, self.state = run, state
        self.host_copy = HostCopy(run.accelerator.device)
        self.pending = None  # the step whose flag host_copy holds, not read yet
        self.nonfinite_steps = set()  # their losses are left out of the log (Meter)

    def defer(self, step: int, nonfinite: torch.Tensor):
        self.host_copy.copy(nonfinite)
        self.pending = step

    def settle(self):
        if self.pending is None:
            return
        step, self.pending = self.pending, None
        nonfinite = self.host_copy.read()
        if not nonfinite:
            self.run.scheduler.step()  # the update happened: its schedule advances, as step_optimizer's does
        self.record(step, nonfinite=nonfinite, updated=not nonfinite)

    def record(self, step: int, nonfinite: bool, updated: bool):
        """Counts a skipped step; too many non-finite ones stop the run with the last good state saved."""
        if nonfinite:
            self.nonfinite_steps.add(step)
            self.state.nonfinite_skipped += 1
            limit = self.run.cfg.checkpoint.nonfinite_limit
            if self.state.nonfinite_skipped > limit:
                self.state.step = step - 1  # what the parameters are: the skipped steps changed nothing
                path = self.run.save_checkpoint(self.state)
                raise TrainingStopped(f"{self.state.nonfinite_skipped} steps had non-finite loss or gradients "
                                      f"(max_nonfinite_steps={limit}); stopped at step {step}, "
                                      f"state of step {step - 1} saved in {path}")
        elif not updated:
            self.state.overflow_skipped += 1
