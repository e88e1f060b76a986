"""Experiment trackers through Accelerate's `log_with`.

`log_with: auto` (the default) logs to TensorBoard when the `tensorboard` package is installed
(`pip install 'finetune_opt[tracking]'`) and to nothing otherwise; `none` turns logging off; any of
Accelerate's trackers by name, or several comma-separated (`tensorboard,wandb`), pass through to
Accelerate, which reads their own settings (WANDB_PROJECT, MLFLOW_TRACKING_URI, ...). Every
log_every steps the engine logs the mean loss, lr, mean gradient norm, mean step time and the
memory in use (finetune_opt.train.engine.Meter); TensorBoard's event files land in <output_dir>/logs.
"""

import json
import os
from contextlib import contextmanager

import torch
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType

from finetune_opt.errors import ConfigError, one_of
from finetune_opt.measure.timing import current_rss_bytes

AUTO, OFF = "auto", "none"
TRACKERS = tuple(t.value for t in LoggerType if t != LoggerType.ALL)
LOG_DIR = "logs"  # under output_dir: Accelerate's project name, TensorBoard's run directory


def trackers(log_with: str | None) -> list[str]:
    """The trackers `log_with` asks for; one line naming the choices, or the missing package."""
    if log_with is None or log_with == OFF:
        return []
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    if log_with == AUTO:
        return ["tensorboard"] if "tensorboard" in available else []
    names = [n.strip() for n in log_with.split(",")]
    for name in names:
        if name not in TRACKERS:
            raise one_of("log_with tracker", name, (AUTO, OFF, *TRACKERS))
        if name not in available:
            raise ConfigError(f"log_with={name} needs the {name!r} package: pip install {name}"
                              + (" (or 'finetune_opt[tracking]')" if name == "tensorboard" else ""))
    return names


def trainer_reporting(log_with: str | None, output_dir: str) -> tuple[list, list]:
    """The same trackers for transformers.Trainer: (report_to, callbacks), TensorBoard writing to
    <output_dir>/logs as the engine's does (the Trainer's own tags: train/loss, train/learning_rate,
    train/grad_norm)."""
    names = trackers(log_with)
    if "tensorboard" not in names:
        return names, []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    writer = SummaryWriter(os.path.join(output_dir, LOG_DIR))
    return [n for n in names if n != "tensorboard"], [TensorBoardCallback(tb_writer=writer)]


def _scalar_config(config: dict) -> dict:
    """TensorBoard's hparams take numbers, strings and bools only: a section's settings by their dotted
    names (loop.max_steps), so each is its own column; any other value as JSON text."""
    items = [(f"{k}.{f}", x) if isinstance(v, dict) else (k, v)
             for k, v in config.items() for f, x in (v.items() if isinstance(v, dict) else [(None, v)])]
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in items}


@contextmanager
def tracking(accelerator, config: dict):
    """Trackers started for the run (if the Accelerator has any) and closed after it, however it ends."""
    if not accelerator.log_with:
        yield
        return
    accelerator.init_trackers(LOG_DIR, config=_scalar_config(config))
    try:
        yield
    finally:
        accelerator.end_training()


def memory_in_use(device: torch.device) -> int:
    """Bytes held now: the CUDA allocator's, or the process's resident set on CPU."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else current_rss_bytes()
