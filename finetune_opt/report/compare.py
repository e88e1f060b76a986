"""`finetune-opt compare`: a Markdown table and PNG plots across runs' results.json files."""

import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from finetune_opt.errors import ConfigError  # noqa: E402
from finetune_opt.measure.timing import peak_bytes  # noqa: E402
from finetune_opt.report.memory import breakdown_table, plot_breakdown  # noqa: E402
from finetune_opt.measure.results import Results, format_table, load_results  # noqa: E402
from finetune_opt.tasks import get_task  # noqa: E402


def load_runs(run_dirs: list[str]) -> list[Results]:
    runs = [load_results(d) for d in run_dirs]
    tasks = {r.task for r in runs}
    if len(tasks) > 1:
        raise ConfigError(f"runs are of different tasks ({', '.join(sorted(tasks))}); compare one task at a time")
    return runs


def rank_runs(runs: list[Results]) -> list[Results]:
    """Best first by the task's headline metric, in its direction; runs without it (NaN) last."""
    task = get_task(runs[0].task)
    return sorted(runs, key=lambda r: task.rank_key(r.metrics.get(task.headline)))


def _label(r):
    return os.path.basename(os.path.normpath(r.config["output"]["output_dir"]))


def _bar(ax, runs, values, title, ylabel, errors=None, color="tab:blue"):
    labels = [_label(r) for r in runs]
    ax.bar(labels, values, yerr=errors, capsize=4, color=color)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=20)
    for i, v in enumerate(values):
        ax.annotate(f"{v:.4g}", (i, v), ha="center", va="bottom", fontsize=8)


def plot_runs(runs: list[Results], out_dir: str) -> list[str]:
    metric = get_task(runs[0].task).headline
    files = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(runs):  # line styles cycle so that identical curves stay visible
        ax.plot([h["step"] for h in r.history], [h["loss"] for h in r.history], label=_label(r),
                linestyle=["-", "--", ":", "-."][i % 4], linewidth=1.6)
    ax.set(xlabel="optimizer step", ylabel="train loss", title="Training loss")
    ax.legend()
    files.append(_save(fig, out_dir, "loss_curves.png"))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    _bar(axes[0], runs, [r.metrics[metric] for r in runs], f"Dev {metric}", metric)
    step = [r.timing["step_ms"] for r in runs]
    _bar(axes[1], runs, [s["median"] for s in step], "Step time (median, p10-p90)", "ms",
         errors=[[s["median"] - s["p10"] for s in step], [s["p90"] - s["median"] for s in step]])
    _bar(axes[1], runs, [r.timing["optimizer_step_ms"]["median"] for r in runs],
         "Step time (median, p10-p90); optimizer step in orange", "ms", color="tab:orange")
    mem = [r.memory for r in runs]
    _bar(axes[2], runs, [peak_bytes(m) / 2**20 for m in mem],
         "Peak GPU memory" if mem[0]["kind"] == "cuda" else "Peak RSS (process)", "MiB")
    fig.tight_layout()
    files.append(_save(fig, out_dir, "metric_time_memory.png"))
    breakdown = plot_breakdown(runs, os.path.join(out_dir, "memory_breakdown.png"))
    return files + ([breakdown] if breakdown else [])


def _save(fig, out_dir, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_comparison(run_dirs: list[str], out_dir: str) -> str:
    """Write report.md + plots to out_dir; return the Markdown."""
    from finetune_opt.train.run_dir import make_writable_dir  # (imports torch)

    runs = rank_runs(load_runs(run_dirs))
    task = get_task(runs[0].task)
    make_writable_dir(out_dir, "compare --out", probe="report.md")  # a file or unwritable place: one line
    plots = plot_runs(runs, out_dir)
    env = runs[0]
    markdown = "\n".join([
        f"# {task.name}: {len(runs)} runs",
        "",
        f"Ranked by dev {task.headline} ({'higher' if task.higher_is_better else 'lower'} is better), best first.",
        f"Device: {env.device['type']} ({env.device['name']}), {env.device['processes']} process(es); "
        f"torch {env.versions['torch']}, transformers {env.versions['transformers']}; {env.date}.",
        f"Step times exclude the first {env.config['measure']['timing_warmup_steps']} steps; peak memory "
        + ("is torch.cuda.max_memory_allocated." if env.memory["kind"] == "cuda"
           else "is the process's peak RSS (includes loading model and data)."),
        "",
        format_table(runs),
        "",
        breakdown_table(runs),
        "",
        *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots],
        "",
    ])
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(markdown)
    return markdown
