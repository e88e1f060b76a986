"""Checkpoints: Accelerate's save_state (model, optimizer, scheduler, scaler, RNG states of every
process) plus our loop state, written to a temp dir and renamed into place, so a kill mid-save
never leaves a checkpoint that looks complete but is not."""

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass, field

from finetune_opt.errors import ConfigError

LOOP_STATE = "loop_state.json"


@dataclass
class LoopState:
    """The training loop's own state, saved as loop_state.json next to Accelerate's."""
    step: int = 0                                  # optimizer updates done (incl. skipped ones)
    history: list = field(default_factory=list)    # [{step, loss, lr}] every log_every steps
    nonfinite_skipped: int = 0
    overflow_skipped: int = 0


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, "checkpoints", f"step-{step:07d}")


def save_checkpoint(accelerator, output_dir: str, loop_state: LoopState) -> str:
    final = checkpoint_dir(output_dir, loop_state.step)
    tmp = final + ".tmp"
    if accelerator.is_main_process and os.path.isdir(tmp):
        shutil.rmtree(tmp)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)  # every rank writes its RNG state; main writes the rest
    if accelerator.is_main_process:
        with open(os.path.join(tmp, LOOP_STATE), "w") as f:
            json.dump(dataclasses.asdict(loop_state), f)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def find_checkpoint(path: str) -> str:
    """`path` is a checkpoint dir, or a run / checkpoints dir whose newest complete checkpoint is used."""
    if os.path.isfile(os.path.join(path, LOOP_STATE)):
        return path
    for parent in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(parent):
            steps = sorted(d for d in os.listdir(parent) if re.fullmatch(r"step-\d+", d)
                           and os.path.isfile(os.path.join(parent, d, LOOP_STATE)))
            if steps:
                return os.path.join(parent, steps[-1])
    raise ConfigError(f"resume path {path!r} holds no checkpoint (a step-N dir with {LOOP_STATE})")


def read_loop_state(path: str) -> LoopState:
    with open(os.path.join(path, LOOP_STATE)) as f:
        return LoopState(**json.load(f))


def load_checkpoint(accelerator, path: str) -> LoopState:
    """Restore everything registered with the accelerator; return the loop state."""
    accelerator.load_state(path)
    return read_loop_state(path)
