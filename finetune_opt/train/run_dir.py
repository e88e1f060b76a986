"""The output directory of a run: checked before anything is loaded, never shared, never mixed.

`claim_output_dir` (called by every recipe before it loads data or a model) makes sure the
directory can be written (by creating it), refuses one that holds a finished run or another
run's checkpoints unless `overwrite=true` or the run resumes it, and takes a lock that a second
run into the same directory meets at once. `resume_changes` compares a checkpoint's config with
the resuming one and allows only the changes that leave the trained model the same.
"""

import fcntl
import os
import shutil
import socket

from finetune_opt.train.checkpoint import (STEP_DIR, checkpoint_dir, checkpoint_problem, data_fingerprint, find_checkpoint,
                                     read_loop_state, read_run_config, saved_data_fingerprint)
from finetune_opt.errors import ConfigError
from finetune_opt.measure.config_block import flatten
from finetune_opt.measure.results import RESULTS_FILE
from finetune_opt.train.tracking import LOG_DIR

LOCK_FILE = ".finetune_opt.lock"
# Fields a resumed run may change: where and how often it logs, saves and times, the kernel
# (every implementation resumes every other), and a larger max_steps. Everything else (optimizer,
# hyperparameters, batch, data, model, seed, evaluation) would mix two runs into one result.
RESUME_MAY_CHANGE = ("max_steps", "log_every", "save_every", "timing_warmup_steps", "implementation",
                     "max_nonfinite_steps", "save_final_model", "merge_adapter", "eval_before_training",
                     "eval_batch_size", "output_dir", "overwrite", "log_with", "memory_breakdown")
RUN_OUTPUTS = (RESULTS_FILE, "checkpoints", "model", LOG_DIR)
PATH_FIELDS = ("data_dir", "model", "tokenizer")  # the same place however spelled (symlink, trailing slash)

_held = {}  # realpath -> (open lock file, whether this process created the directory), held until it ends


def resume_changes(cfg, checkpoint: str) -> dict:
    """{field: [checkpoint's value, new value]} for the allowed differences; any other is refused."""
    before = read_run_config(checkpoint)
    if before is None:
        return {}  # written before checkpoints kept their config: nothing to compare
    before = flatten(before)  # by flat names, whichever schema wrote it: the names messages use
    now = {k: v for k, v in cfg.flat().items() if k != "resume"}  # resume: how every resumed run differs
    changed = {k: [before.get(k), now[k]] for k in now
               if before.get(k, now[k]) != now[k] and not _same_place(k, before.get(k), now[k], checkpoint)}
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if refused:
        listed = ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in refused)
        raise ConfigError(f"resume: {checkpoint} was trained with another config: {listed}; only "
                          f"{', '.join(RESUME_MAY_CHANGE[:9])} may change")
    step = read_loop_state(checkpoint).step
    if cfg.loop.max_steps < step:
        raise ConfigError(f"resume: max_steps={cfg.loop.max_steps} is below the checkpoint's step {step}")
    return changed


def _same_place(key: str, before, now, checkpoint: str) -> bool:
    """The same path however spelled, or for data_dir the same files (by hash) moved elsewhere."""
    if key not in PATH_FIELDS or not (isinstance(before, str) and isinstance(now, str) and os.path.exists(now)):
        return False
    if os.path.realpath(before) == os.path.realpath(now):
        return True
    saved = saved_data_fingerprint(checkpoint) if key == "data_dir" else {}
    return bool(saved) and data_fingerprint(now) == saved


def check_weights_finite(checkpoint: str):
    """A checkpoint whose weights hold NaN / inf (saved from a diverged run, or damaged before its
    manifest was written) would resume into a run that skips every step: refused. Whole-model files
    (.safetensors) and FSDP2's sharded model folders (pytorch_model_fsdp_N/*.distcp) are both read,
    one tensor at a time where the format allows."""
    from safetensors import SafetensorError

    for name in sorted(os.listdir(checkpoint)):
        path = os.path.join(checkpoint, name)
        try:
            bad = next((k for k, t in _saved_tensors(path) if not t.isfinite().all()), None)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise ConfigError(f"checkpoint {checkpoint!r}: {name} does not load: {e}") from None
        if bad:
            raise ConfigError(f"checkpoint {checkpoint!r} holds non-finite weights ({bad} in {name}); "
                              f"resume from an earlier step-N checkpoint or start afresh")


def _saved_tensors(path: str):
    """(name, tensor) of the floating-point weights saved at `path`; nothing for other files."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as weights:
            yield from ((k, weights.get_tensor(k)) for k in weights.keys())
    elif os.path.basename(path).startswith("pytorch_model_fsdp_") and os.path.isdir(path):
        yield from _flat(_read_sharded(path))


def _read_sharded(folder: str) -> dict:
    """A torch.distributed.checkpoint folder read whole in this one process (no process group)."""
    import warnings

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        return _load_state_dict_from_keys(storage_reader=FileSystemReader(folder))


def _flat(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        elif hasattr(v, "is_floating_point") and v.is_floating_point():
            yield f"{prefix}{k}", v


def make_writable_dir(path: str, what: str = "output_dir", probe: str = LOCK_FILE) -> bool:
    """Checked by creating it and the file `probe` in it (the lock, or the first output); True if the
    directory had to be created."""
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{what} must be a directory path, got {path!r}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} {path!r} is a file, not a directory")
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, probe), "a").close()
    except OSError as e:
        raise ConfigError(f"{what} {path!r} cannot be written: {e.strerror}") from None
    return created


def _lock(path: str, created: bool):
    real = os.path.realpath(path)
    if real in _held:
        return  # this process already holds it (runs one after another in one process)
    f = open(os.path.join(path, LOCK_FILE), "r+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigError(f"output_dir {path!r} is in use by {holder} (lock {LOCK_FILE}); "
                          f"wait for it or choose another output_dir") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}")
    f.flush()
    _held[real] = (f, created)


def release_output_dir(path) -> None:
    """After bad input: a directory this process created and left empty (but for its lock) is
    removed again, so a refused run leaves nothing behind."""
    real = os.path.realpath(path) if isinstance(path, str) else None
    if real not in _held or not _held[real][1] or os.listdir(path) != [LOCK_FILE]:
        return
    _held.pop(real)[0].close()
    os.remove(os.path.join(path, LOCK_FILE))
    os.rmdir(path)


def _resumes_its_own_run(cfg, checkpoint) -> bool:
    own = os.path.realpath(os.path.join(cfg.output.output_dir, "checkpoints"))
    return checkpoint is not None and os.path.dirname(os.path.realpath(checkpoint)) == own


def _refuse_or_clear_previous_run(cfg, checkpoint):
    """A fresh run, or one resuming another run's checkpoint, into a directory holding a run's
    outputs: refused, or with overwrite=true those outputs are removed so nothing of the old run
    mixes into the new one. Only a run resuming its own checkpoints writes into them."""
    present = [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(cfg.output.output_dir, name))]
    if not present or _resumes_its_own_run(cfg, checkpoint):
        return
    if not cfg.output.overwrite:
        what = ("a finished run" if RESULTS_FILE in present else "an unfinished run's checkpoints"
                if "checkpoints" in present else "an earlier run's outputs")
        raise ConfigError(f"output_dir {cfg.output.output_dir!r} holds {what} ({', '.join(present)}); "
                          f"resume={cfg.output.output_dir}, choose another output_dir, or overwrite=true")
    for name in present:
        target = os.path.join(cfg.output.output_dir, name)
        shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)


def _refuse_or_drop_later_steps(cfg, checkpoint: str):
    """Resuming step N into a directory that holds later steps would interleave two timelines
    (and a later resume=<dir> would pick the abandoned one): refused, or dropped with overwrite=true."""
    own = os.path.join(cfg.output.output_dir, "checkpoints")
    resumed = os.path.basename(checkpoint_dir("", read_loop_state(checkpoint).step))
    later = sorted(d for d in os.listdir(own) if STEP_DIR.fullmatch(d) and d > resumed
                   and not checkpoint_problem(os.path.join(own, d))) if os.path.isdir(own) else []
    if later and not cfg.output.overwrite:
        raise ConfigError(f"resume: output_dir {cfg.output.output_dir!r} holds checkpoints after {resumed} "
                          f"({', '.join(later)}); resume={cfg.output.output_dir} continues the newest, "
                          f"overwrite=true drops them")
    for d in later:
        shutil.rmtree(os.path.join(own, d))


def claim_output_dir(cfg, is_main_process: bool = True):
    """Everything about output_dir and resume that can fail, checked before any loading."""
    checkpoint = find_checkpoint(cfg.checkpoint.resume) if cfg.checkpoint.resume else None
    if checkpoint:
        resume_changes(cfg, checkpoint)
        check_weights_finite(checkpoint)
    if not is_main_process:
        return
    _lock(cfg.output.output_dir, created=make_writable_dir(cfg.output.output_dir))
    _refuse_or_clear_previous_run(cfg, checkpoint)
    if checkpoint:
        _refuse_or_drop_later_steps(cfg, checkpoint)
