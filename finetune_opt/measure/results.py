"""results.json: one typed `Results` object, written (atomically: temp file + rename, so a killed
run leaves no half file) and read back by the same code; reading checks `schema_version`."""

import dataclasses
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from finetune_opt import distributed
from finetune_opt.errors import ConfigError
from finetune_opt.measure.config_block import nest
from finetune_opt.measure.timing import peak_bytes
from finetune_opt.models.precision import native_bf16_flags

SCHEMA_VERSION = 2  # 2: the `config` block in sections (finetune_opt.measure.config_block); 1 is read too
RESULTS_FILE = "results.json"


@dataclass
class Results:
    """Everything a finished run reports. The nested blocks are plain dicts, documented where
    they are made: timing (measure.StepTimer.summary), memory (measure.peak_memory), optimizer
    (optim.describe_optimizer)."""
    task: str
    config: dict                     # the RunConfig, every field, in sections: enough to reproduce the run
    device: dict                     # type, name, processes, cpu_threads
    versions: dict                   # python, torch, transformers, accelerate, datasets, finetune_opt
    date: str
    optimizer: dict                  # the hyperparameters that ran, read back from the optimizer
    metrics: dict                    # the task's dev metrics after training
    history: list                    # [{step, loss, lr}]
    timing: dict
    throughput: dict                 # processes, samples_per_s, tokens_per_s (all ranks)
    memory: dict
    metrics_before_training: dict | None = None
    final_train_loss: float | None = None
    resumed_from_step: int | None = None
    resumed_with_changes: dict | None = None  # {field: [checkpoint's value, new value]}, the allowed ones
    skipped_steps: dict | None = None  # nonfinite, fp16_overflow
    per_rank: list | None = None       # [{rank, step_ms_median, optimizer_step_ms_median, peak_memory_bytes}]
    parameters: dict | None = None     # SFT: total / trainable parameter counts
    data: dict | None = None           # SFT: kept / truncated / dropped examples per split
    # how the run was spread: {type: single|ddp|fsdp2|deepspeed, processes, sharding, ...} (distributed.describe)
    distribution: dict | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload, source: str = "results") -> "Results":
        if not isinstance(payload, dict):
            raise ConfigError(f"{source} is not a results object (a JSON mapping), got {type(payload).__name__}")
        version = payload.get("schema_version")
        if version == 1 and isinstance(payload.get("config"), dict):  # the flat config block of version 1
            payload = {**payload, "config": nest(payload["config"]), "schema_version": SCHEMA_VERSION}
        elif version != SCHEMA_VERSION:
            raise ConfigError(f"{source} has schema_version {version!r}; this finetune_opt reads 1 to {SCHEMA_VERSION}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - set(fields))
        missing = [n for n, f in fields.items() if n not in payload and f.default is dataclasses.MISSING]
        if unknown or missing:
            raise ConfigError(f"{source} does not match schema {SCHEMA_VERSION}: "
                              + "; ".join(filter(None, [unknown and f"unknown fields {', '.join(unknown)}",
                                                        missing and f"missing fields {', '.join(missing)}"])))
        return cls(**payload)

    def save(self, output_dir: str):
        write_json_atomic(os.path.join(output_dir, RESULTS_FILE), self.to_dict())


def load_results(run_dir: str) -> Results:
    """The Results of a finished run directory; any unreadable file is a one-line ConfigError."""
    path = os.path.join(run_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"{run_dir!r} has no {RESULTS_FILE} (is it a finished run directory?)")
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({str(e).splitlines()[0]})") from None
    return Results.from_dict(payload, path)


def new_results(cfg, accelerator, **measured) -> Results:
    """Results of a run of `cfg` on `accelerator`'s processes: the environment, plus what was measured."""
    return Results(task=cfg.task, config=cfg.model_dump(), **environment(accelerator), **measured)


def environment(accelerator) -> dict:
    import accelerate
    import datasets
    import transformers

    import finetune_opt

    device = accelerator.device
    return {
        "device": {"type": device.type,
                   "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
                   "processes": accelerator.num_processes,
                   "cpu_threads": torch.get_num_threads(),
                   "cpu_native_bf16": native_bf16_flags()},  # e.g. [avx512_bf16, amx_bf16]; [] = emulated
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                     "datasets": datasets.__version__, "finetune_opt": finetune_opt.__version__},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_json_atomic(path: str, payload: dict):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_results(cfg, accelerator, results: Results | None) -> Results | None:
    """Main process writes <output_dir>/results.json and prints the table; returns the results.
    `results` is None when a signal stopped the run (a checkpoint, not a result): nothing is written."""
    if results is None or not accelerator.is_main_process:
        return None
    results.save(cfg.output.output_dir)
    print(format_table([results]))
    return results


def _mib(n):
    return f"{n / 2**20:,.0f}" if n is not None else "-"


def _percent(share):
    return share * 100 if share is not None else None


def _num(x, fmt):
    return format(x, fmt) if x is not None else "-"


def summary_row(r: Results) -> dict:
    """The figures one compares across runs, as display strings."""
    mem = r.memory
    peak = peak_bytes(mem)
    return {
        "run": os.path.basename(os.path.normpath(r.config["output"]["output_dir"])),
        "optimizer": f"{r.optimizer['name']} ({r.optimizer['implementation']})",
        "distribution": distributed.label(r.distribution),
        **{k: f"{v:.4f}" for k, v in r.metrics.items() if isinstance(v, float)},
        "train loss": _num(r.final_train_loss, ".4f"),  # None: every step was skipped
        "step ms (median)": _num(r.timing["step_ms"]["median"], ".1f"),
        "step ms (p90)": _num(r.timing["step_ms"]["p90"], ".1f"),
        "optimizer ms (median)": _num(r.timing["optimizer_step_ms"]["median"], ".2f"),
        "samples/s": _num(r.throughput["samples_per_s"], ".1f"),
        "real tokens/s": _num(r.throughput.get("tokens_per_s"), ".0f"),
        # share of the positions computed that were padding (absent in results from before it was measured)
        "padding %": _num(_percent(r.throughput.get("padding_share")), ".1f"),
        "peak GPU MiB" if mem["kind"] == "cuda" else "peak RSS MiB": _mib(peak),
        "optimizer state MiB": _mib(mem["optimizer_state_bytes"]),
    }


def format_table(results: list[Results]) -> str:
    """A Markdown table, one row per run."""
    rows = [summary_row(r) for r in results]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "-") for c in columns) + " |" for row in rows]
    return "\n".join(lines)
