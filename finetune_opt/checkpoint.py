"""Checkpoints: Accelerate's save_state (model, optimizer, scheduler, scaler, RNG states of every
process) plus the run's config and our loop state, written to a temp dir and renamed into place.
loop_state.json is written last and lists every file with its size, so a checkpoint is complete
exactly when its manifest matches: a kill mid-save, a truncated file or a corrupt loop_state.json
makes it incomplete, and resuming from a run directory skips it for the newest complete one."""

import dataclasses
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field

from finetune_opt.errors import ConfigError

LOOP_STATE = "loop_state.json"
RUN_CONFIG = "run_config.json"  # the RunConfig that wrote it: resume compares against it
STEP_DIR = re.compile(r"step-\d+")


@dataclass
class LoopState:
    """The training loop's own state, saved as loop_state.json next to Accelerate's."""
    step: int = 0                                  # optimizer updates done (incl. skipped ones)
    history: list = field(default_factory=list)    # [{step, loss, lr}] every log_every steps
    nonfinite_skipped: int = 0
    overflow_skipped: int = 0


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, "checkpoints", f"step-{step:07d}")


def save_checkpoint(accelerator, output_dir: str, loop_state: LoopState, config: dict | None = None) -> str:
    final = checkpoint_dir(output_dir, loop_state.step)
    tmp, old = final + ".tmp", final + ".old"
    if accelerator.is_main_process:
        for stale in (tmp, old):  # left by a run killed while saving
            if os.path.isdir(stale):
                shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)  # every rank writes its RNG state; main writes the rest
    accelerator.wait_for_everyone()  # every rank's files are there before the manifest lists them
    if accelerator.is_main_process:
        if config is not None:
            _write_json(os.path.join(tmp, RUN_CONFIG), config)
        files = {name: os.path.getsize(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
        _write_json(os.path.join(tmp, LOOP_STATE), {**dataclasses.asdict(loop_state), "files": files})
        if os.path.isdir(final):  # re-saving a step (a resumed branch): never a moment without a complete one
            os.replace(final, old)
        os.replace(tmp, final)
        if os.path.isdir(old):
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _write_json(path: str, payload: dict):
    with open(path, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())


def checkpoint_problem(path: str) -> str | None:
    """Why the checkpoint dir `path` is not complete, or None when it is."""
    try:
        with open(os.path.join(path, LOOP_STATE)) as f:
            files = json.load(f).get("files", {})
    except FileNotFoundError:
        return f"no {LOOP_STATE}"
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON / UTF-8, not a mapping
        return f"{LOOP_STATE} is corrupt"
    for name, size in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        if os.path.getsize(file) != size:
            return f"{name} has {os.path.getsize(file)} bytes, {size} expected"
    return None


_warned = set()


def find_checkpoint(path: str) -> str:
    """`path` is a checkpoint dir (refused if incomplete), or a run / checkpoints dir whose newest
    complete checkpoint is used (incomplete newer ones are skipped with a warning)."""
    if os.path.isfile(os.path.join(path, LOOP_STATE)) or STEP_DIR.fullmatch(os.path.basename(os.path.normpath(path))):
        problem = checkpoint_problem(path)
        if problem:
            raise ConfigError(f"checkpoint {path!r} is incomplete ({problem}); resume from its run directory "
                              f"to use the newest complete one")
        return path
    skipped = []
    for parent in (os.path.join(path, "checkpoints"), path):
        if not os.path.isdir(parent):
            continue
        for step in sorted((d for d in os.listdir(parent) if STEP_DIR.fullmatch(d)), reverse=True):
            candidate = os.path.join(parent, step)
            problem = checkpoint_problem(candidate)
            if not problem:
                if skipped and candidate not in _warned:
                    _warned.add(candidate)
                    print(f"warning: skipped incomplete checkpoint(s) {'; '.join(skipped)}; resuming from {candidate}",
                          file=sys.stderr)
                return candidate
            skipped.append(f"{step} ({problem})")
    detail = f"; incomplete: {'; '.join(skipped)}" if skipped else ""
    raise ConfigError(f"resume path {path!r} holds no complete checkpoint (a step-N dir with {LOOP_STATE}){detail}")


def read_loop_state(path: str) -> LoopState:
    with open(os.path.join(path, LOOP_STATE)) as f:
        state = json.load(f)
    state.pop("files", None)
    return LoopState(**state)


def read_run_config(path: str) -> dict | None:
    """The config of the run that wrote checkpoint `path` (None for checkpoints older than this file)."""
    file = os.path.join(path, RUN_CONFIG)
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return json.load(f)


def load_checkpoint(accelerator, path: str) -> LoopState:
    """Restore everything registered with the accelerator; return the loop state. A checkpoint
    whose files pass the manifest but do not load (another model, damaged contents) is one line."""
    try:
        accelerator.load_state(path)
    except (RuntimeError, ValueError, KeyError, OSError, EOFError) as e:
        raise ConfigError(f"checkpoint {path!r} does not load into this run: {str(e).strip().splitlines()[0]}") from None
    return read_loop_state(path)
