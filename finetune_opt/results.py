"""results.json: written atomically (temp file + rename) so a killed run leaves no half file."""

import dataclasses
import json
import os
import platform
import tempfile
from datetime import datetime, timezone

import torch

from finetune_opt.measure import peak_bytes
from finetune_opt.precision import native_bf16_flags

SCHEMA_VERSION = 1


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


def save_results(cfg, accelerator, measured: dict | None) -> dict | None:
    """Main process writes <output_dir>/results.json and prints the table; returns the payload.
    `measured` is None when SIGTERM stopped the run (a checkpoint, not a result): nothing is written."""
    if measured is None or not accelerator.is_main_process:
        return None
    payload = {"schema_version": SCHEMA_VERSION, "task": cfg.task, "config": dataclasses.asdict(cfg),
               **environment(accelerator), **measured}
    write_json_atomic(os.path.join(cfg.output_dir, "results.json"), payload)
    print(format_table([payload]))
    return payload


def _mib(n):
    return f"{n / 2**20:,.0f}" if n is not None else "-"


def _percent(share):
    return share * 100 if share is not None else None


def _num(x, fmt):
    return format(x, fmt) if x is not None else "-"


def summary_row(r: dict) -> dict:
    """The figures one compares across runs, as display strings."""
    mem = r["memory"]
    peak = peak_bytes(mem)
    return {
        "run": os.path.basename(os.path.normpath(r["config"]["output_dir"])),
        "optimizer": f"{r['optimizer']['name']} ({r['optimizer']['implementation']})",
        **{k: f"{v:.4f}" for k, v in r["metrics"].items() if isinstance(v, float)},
        "train loss": f"{r['final_train_loss']:.4f}",
        "step ms (median)": _num(r["timing"]["step_ms"]["median"], ".1f"),
        "step ms (p90)": _num(r["timing"]["step_ms"]["p90"], ".1f"),
        "optimizer ms (median)": _num(r["timing"]["optimizer_step_ms"]["median"], ".2f"),
        "samples/s": _num(r["throughput"]["samples_per_s"], ".1f"),
        "real tokens/s": _num(r["throughput"].get("tokens_per_s"), ".0f"),
        # share of the positions computed that were padding (absent in results from before it was measured)
        "padding %": _num(_percent(r["throughput"].get("padding_share")), ".1f"),
        "peak GPU MiB" if mem["kind"] == "cuda" else "peak RSS MiB": _mib(peak),
        "optimizer state MiB": _mib(mem["optimizer_state_bytes"]),
    }


def format_table(results: list[dict]) -> str:
    """A Markdown table, one row per run."""
    rows = [summary_row(r) for r in results]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "-") for c in columns) + " |" for row in rows]
    return "\n".join(lines)
