"""The memory breakdown of several runs (finetune_opt.measure.memory): a Markdown table, predicted vs
measured, and one stacked bar per run."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from finetune_opt.distributed import label  # noqa: E402
from finetune_opt.measure.memory import COMPONENTS  # noqa: E402

MiB = 2 ** 20
SHORT = {"parameters": "params", "gradients": "grads", "optimizer_state": "state",
         "optimizer_step_temporaries": "step temps", "activations_and_workspace": "activations"}


def _label(run) -> str:
    return os.path.basename(os.path.normpath(run.config["output"]["output_dir"]))


def _mib(x) -> str:
    return "-" if x is None else f"{x / MiB:.1f}"


def breakdown_table(runs) -> str:
    """One row per run with a breakdown: measured (predicted) MiB per component, the step's own
    peak above its start, and the state by dtype."""
    runs = [r for r in runs if r.memory.get("breakdown")]
    if not runs:
        return ""
    head = "| run | optimizer | distribution | " + " | ".join(f"{SHORT[c]} MiB" for c in COMPONENTS) + \
        " | step peak above start MiB | state by dtype |"
    lines = [head, "|" + "---|" * (len(COMPONENTS) + 5)]
    for r in runs:
        b = r.memory["breakdown"]
        cells = [f"{_mib(b['measured'].get(c))} ({_mib(b['predicted'].get(c))})" for c in COMPONENTS]
        dtypes = ", ".join(f"{k} {v / MiB:.1f}" for k, v in b["measured"]["optimizer_state_by_dtype"].items())
        name = r.optimizer["name"] + (" in backward" if b.get("optimizer_in_backward") else "")
        lines.append(f"| {_label(r)} | {name} ({r.optimizer['implementation']}) | {label(r.distribution)} | "
                     + " | ".join(cells) +
                     f" | {_mib(b['measured'].get('step_peak_above_start'))} | {dtypes} |")
    method = runs[0].memory["breakdown"]["method"]
    return "\n".join([f"Memory of one step on one rank (under FSDP2: that rank's shards), measured (predicted), "
                      f"by {method}; batch shape {runs[0].memory['breakdown']['batch_shape']}.", "", *lines])


def plot_breakdown(runs, path: str) -> str | None:
    """Stacked bars of the measured components per run, predicted as a hollow bar beside each."""
    runs = [r for r in runs if r.memory.get("breakdown")]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(runs)), 4.5))
    colors = plt.get_cmap("tab10").colors
    for i, r in enumerate(runs):
        b = r.memory["breakdown"]
        for offset, kind in ((-0.2, "measured"), (0.2, "predicted")):
            bottom = 0.0
            for c, color in zip(COMPONENTS, colors):
                value = (b[kind].get(c) or 0) / MiB
                ax.bar(i + offset, value, 0.38, bottom=bottom, color=color if kind == "measured" else "none",
                       edgecolor=color, hatch=None if kind == "measured" else "//",
                       label=SHORT[c] if i == 0 and kind == "measured" else None)
                bottom += value
    ax.set_xticks(range(len(runs)), [_label(r) for r in runs], fontsize=7, rotation=20)
    ax.set(ylabel="MiB", title="Memory by component: measured (solid) | predicted (hatched)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
