"""Checkpoints: Accelerate's save_state (model, optimizer, scheduler, scaler, RNG states of every
process) plus the run's config and our loop state, written to a temp dir and renamed into place.
loop_state.json is written last and lists every file with its size and sha256, so a checkpoint is
complete exactly when its manifest matches: a kill mid-save, a truncated or damaged file or a
corrupt loop_state.json makes it incomplete, and resuming from a run directory skips it for the
newest complete one. A second stop signal during a save waits for the save to finish."""

import dataclasses
import hashlib
import json
import os
import functools
import re
import shutil
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

from finetune_opt.errors import ConfigError, Interrupted
from finetune_opt.measure.config_block import flatten

LOOP_STATE = "loop_state.json"
RUN_CONFIG = "run_config.json"  # the RunConfig that wrote it: resume compares against it
DATA = "data_sha256"  # manifest key: the data_dir's files and their hashes
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


# A save in progress, and the second stop signal that arrived during it (engine._stop_signals).
_save = {"active": False, "signal": None}


def defer_exit_during_save(signum: int) -> bool:
    """True if a checkpoint save is running: the exit waits for it (save_checkpoint then raises
    Interrupted). Exiting mid-save would leave only a half-written step-N.tmp."""
    if _save["active"]:
        _save["signal"] = signum
    return _save["active"]


@contextmanager
def _save_in_progress(final: str, output_dir: str):
    _save.update(active=True, signal=None)
    try:
        yield
    finally:
        signum, _save["signal"], _save["active"] = _save["signal"], None, False
    if signum is not None:
        name = signal.Signals(signum).name
        raise Interrupted(f"{name} again during a checkpoint save: stopped once it was saved; checkpoint {final}; "
                          f"continue with resume={output_dir}", exit_code=128 + signum)


def save_checkpoint(accelerator, output_dir: str, loop_state: LoopState, config: dict | None = None) -> str:
    final = checkpoint_dir(output_dir, loop_state.step)
    with _save_in_progress(final, output_dir):
        _save_to(accelerator, final, loop_state, config)
    return final


def _save_to(accelerator, final: str, loop_state: LoopState, config: dict | None):
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
        # every file, sharded state's folders too (FSDP2: pytorch_model_fsdp_0/__0_0.distcp, ...)
        names = sorted(os.path.relpath(os.path.join(folder, f), tmp) for folder, _, fs in os.walk(tmp) for f in fs)
        files = {name: os.path.getsize(os.path.join(tmp, name)) for name in names}
        digests = {name: file_sha256(os.path.join(tmp, name)) for name in names}
        _write_json(os.path.join(tmp, LOOP_STATE), {**dataclasses.asdict(loop_state), "files": files,
                                                    "sha256": digests,
                                                    DATA: data_fingerprint(flatten(config or {}).get("data_dir"))})
        if os.path.isdir(final):  # re-saving a step (a resumed branch): never a moment without a complete one
            os.replace(final, old)
        os.replace(tmp, final)
        if os.path.isdir(old):
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def data_fingerprint(data_dir: str | None) -> dict:
    """{file: sha256} of a local data_dir's files: a resume may then name the same data at another
    path (the data moved). Hashed once per process (file_sha256's cache)."""
    if not isinstance(data_dir, str) or not os.path.isdir(data_dir):
        return {}
    return {name: file_sha256(os.path.join(data_dir, name)) for name in sorted(os.listdir(data_dir))
            if os.path.isfile(os.path.join(data_dir, name))}


def saved_data_fingerprint(path: str) -> dict:
    """The data fingerprint checkpoint `path` was saved with ({} for older checkpoints)."""
    with open(os.path.join(path, LOOP_STATE)) as f:
        return json.load(f).get(DATA) or {}


def file_sha256(path: str) -> str:
    """Cached by size and mtime: a resume verifies the same checkpoint more than once."""
    stat = os.stat(path)
    return _sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def _write_json(path: str, payload: dict):
    with open(path, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())


def checkpoint_problem(path: str) -> str | None:
    """Why the checkpoint dir `path` is not complete, or None when it is."""
    try:
        with open(os.path.join(path, LOOP_STATE)) as f:
            manifest = json.load(f)
        files, digests = manifest.get("files", {}), manifest.get("sha256", {})
        _loop_state(manifest)
    except FileNotFoundError:
        return f"no {LOOP_STATE}"
    except (OSError, ValueError, AttributeError, TypeError):  # unreadable, not JSON / UTF-8, wrong fields
        return f"{LOOP_STATE} is corrupt"
    for name, size in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        if os.path.getsize(file) != size:
            return f"{name} has {os.path.getsize(file)} bytes, {size} expected"
        if name in digests and file_sha256(file) != digests[name]:  # older checkpoints list sizes only
            return f"{name} does not match its sha256 in {LOOP_STATE} (damaged after it was saved)"
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
        for step in _step_dirs(os.listdir(parent)):
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


def _step_dirs(names: list) -> list:
    """step-N dirs, newest first. A kill between a re-save's two renames (step-N -> step-N.old,
    step-N.tmp -> step-N) leaves no step-N: its step-N.old, still complete, stands in for it."""
    steps = {d for d in names if STEP_DIR.fullmatch(d)}
    steps |= {d for d in names if d.endswith(".old") and STEP_DIR.fullmatch(d[:-4]) and d[:-4] not in steps}
    return sorted(steps, reverse=True)


def _loop_state(manifest: dict) -> LoopState:
    """The manifest's loop state, its types checked (a hand-edited file must not fail mid-run)."""
    state = LoopState(**{k: v for k, v in manifest.items() if k not in ("files", "sha256", DATA)})
    counts = (state.step, state.nonfinite_skipped, state.overflow_skipped)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts) \
            or not isinstance(state.history, list):
        raise ValueError("loop state fields of the wrong type")
    return state


def read_loop_state(path: str) -> LoopState:
    with open(os.path.join(path, LOOP_STATE)) as f:
        return _loop_state(json.load(f))


def read_run_config(path: str) -> dict | None:
    """The config of the run that wrote checkpoint `path` (None for checkpoints older than this file)."""
    file = os.path.join(path, RUN_CONFIG)
    if not os.path.isfile(file):
        return None
    try:
        with open(file) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:  # a manifest without hashes (older checkpoints) cannot vouch for it
        raise ConfigError(f"checkpoint {path!r}: {RUN_CONFIG} is not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"checkpoint {path!r}: {RUN_CONFIG} is not a mapping of RunConfig fields")
    return config


def load_checkpoint(accelerator, path: str) -> LoopState:
    """Restore everything registered with the accelerator; return the loop state. A checkpoint
    whose files pass the manifest but do not load (another model, damaged contents) is one line."""
    try:
        accelerator.load_state(path)
    except (RuntimeError, ValueError, KeyError, OSError, EOFError) as e:
        raise ConfigError(f"checkpoint {path!r} does not load into this run: {str(e).strip().splitlines()[0]}") from None
    return read_loop_state(path)
