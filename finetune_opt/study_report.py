"""Aggregate a study's cells into summary.json, report.md and PNG plots.

Everything is recomputed from the cells' results.json files, so a study that was interrupted and
resumed yields a summary of the same form as one that ran straight through.
"""

import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from finetune_opt.measure import peak_bytes  # noqa: E402
from finetune_opt.results import load_results, write_json_atomic  # noqa: E402
from finetune_opt.stats import format_mean_std, mean_std_ci  # noqa: E402
from finetune_opt.tasks import get_task  # noqa: E402


def _label(row):
    params = "".join(f", {k}={v:g}" if isinstance(v, float) else f", {k}={v}" for k, v in row["params"].items())
    return f"{row['optimizer']} ({row['implementation']}{params})"


def aggregate_main(cells, results, task):
    """One row per (engine, optimizer, params): the headline metric and costs over seeds."""
    metric = task.headline
    groups = defaultdict(list)
    for c in cells:
        if c["group"] == "main":
            groups[(c["engine"], c["optimizer"], json.dumps(c["params"], sort_keys=True))].append(results[c["id"]])
    rows = []
    for (engine, optimizer, params), runs in groups.items():
        row = {"engine": engine, "optimizer": optimizer, "implementation": runs[0].optimizer["implementation"],
               "params": json.loads(params), "seeds": [r.config["seed"] for r in runs],
               metric: mean_std_ci([r.metrics[metric] for r in runs]),
               "step_ms": mean_std_ci([r.timing["step_ms"]["median"] for r in runs]),
               "optimizer_step_ms": mean_std_ci([r.timing["optimizer_step_ms"]["median"] for r in runs]),
               "samples_per_s": mean_std_ci([r.throughput["samples_per_s"] for r in runs]),
               "peak_memory_bytes": mean_std_ci([peak_bytes(r.memory) for r in runs]),
               "memory_kind": runs[0].memory["kind"],
               "optimizer_state_bytes": runs[0].memory["optimizer_state_bytes"]}
        train_key = f"train_{metric}"
        if all(train_key in r.metrics for r in runs):
            row[train_key] = mean_std_ci([r.metrics[train_key] for r in runs])
            # Generalisation gap: train minus dev (for perplexity: dev minus train), per seed.
            sign = 1 if task.higher_is_better else -1
            row["generalisation_gap"] = mean_std_ci([sign * (r.metrics[train_key] - r.metrics[metric]) for r in runs])
        rows.append(row)
    return rows


def speedups(cells, results):
    """adamw (its default, foreach) over adamw_fused, per seed and engine: same study, same data."""
    by_key = {(c["engine"], c["optimizer"], c["seed"], json.dumps(c["params"], sort_keys=True)): results[c["id"]]
              for c in cells if c["group"] == "main"}
    out = defaultdict(lambda: {"step_time_ratio": [], "optimizer_step_ratio": []})
    for (engine, opt, seed, params), r in by_key.items():
        fused = by_key.get((engine, "adamw_fused", seed, params))
        if opt == "adamw" and fused:
            pair = f"{engine}: adamw ({r.optimizer['implementation']}) / adamw_fused (fused)"
            out[pair]["step_time_ratio"].append(r.timing["step_ms"]["median"] / fused.timing["step_ms"]["median"])
            out[pair]["optimizer_step_ratio"].append(r.timing["optimizer_step_ms"]["median"]
                                                     / fused.timing["optimizer_step_ms"]["median"])
    return {pair: {k: mean_std_ci(v) for k, v in d.items()} for pair, d in out.items()}


def engine_comparison(rows, metric):
    acc = {(r["optimizer"], json.dumps(r["params"])): r for r in rows if r["engine"] == "accelerate"}
    out = []
    for r in rows:
        twin = acc.get((r["optimizer"], json.dumps(r["params"])))
        if r["engine"] == "trainer" and twin:
            out.append({"optimizer": r["optimizer"], f"{metric}_accelerate": twin[metric]["mean"],
                        f"{metric}_trainer": r[metric]["mean"],
                        "samples_per_s_ratio_accelerate_over_trainer":
                            twin["samples_per_s"]["mean"] / r["samples_per_s"]["mean"]})
    return out


def sensitivity(cells, results, metric, higher):
    cells = [c for c in cells if c["group"] == "sensitivity"]
    if not cells:
        return None
    lrs = sorted({c["params"]["lr"] for c in cells})
    wds = sorted({c["params"]["weight_decay"] for c in cells})
    maps, statements = {}, []
    for opt in dict.fromkeys(c["optimizer"] for c in cells):
        grid = np.full((len(lrs), len(wds)), np.nan)
        for i, lr in enumerate(lrs):
            for j, wd in enumerate(wds):
                vals = [results[c["id"]].metrics[metric] for c in cells
                        if c["optimizer"] == opt and c["params"] == {"lr": lr, "weight_decay": wd}]
                grid[i, j] = np.mean(vals) if vals else np.nan
        pick = np.nanargmax if higher else np.nanargmin
        best = {lr: wds[int(pick(grid[i]))] for i, lr in enumerate(lrs)}
        spread = {lr: float(np.nanmax(grid[i]) - np.nanmin(grid[i])) for i, lr in enumerate(lrs)}
        maps[opt] = {"grid": grid.tolist(), "best_weight_decay_per_lr": best, "spread_over_weight_decay_per_lr": spread}
        same = len(set(best.values())) == 1
        statements.append(
            f"{opt}: best weight decay per lr " + ", ".join(f"{lr:g}->{wd:g}" for lr, wd in best.items())
            + f" ({'the same at every lr' if same else 'it moves with lr'}); {metric} range across weight decays "
            + ", ".join(f"{s:.3f}" for s in spread.values()) + " at those lrs.")
    return {"lr": lrs, "weight_decay": wds, "maps": maps, "statement": " ".join(statements)}


def plot_main(rows, metric, out_dir):
    labels = [f"{r['engine']}\n{_label(r)}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 2.2 * len(rows)), 4.2))
    x = np.arange(len(rows))
    for i, r in enumerate(rows):
        s = r[metric]
        err = None if s["std"] is None else [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]
        axes[0].errorbar(i, s["mean"], yerr=err, fmt="o", color="tab:blue", capsize=5, label="dev (mean, 95% CI)" if i == 0 else None)
        axes[0].scatter([i] * len(s["values"]), s["values"], color="tab:blue", alpha=0.35, s=12)
        if f"train_{metric}" in r:
            axes[0].scatter(i + 0.12, r[f"train_{metric}"]["mean"], marker="^", color="tab:green",
                            label="train (mean)" if i == 0 else None)
    axes[0].set(xticks=x, title=f"{metric} over seeds", ylabel=metric)
    axes[0].set_xticklabels(labels, fontsize=7)
    axes[0].legend(fontsize=8)
    axes[1].bar(x - 0.2, [r["step_ms"]["mean"] for r in rows], 0.4, label="step")
    axes[1].bar(x + 0.2, [r["optimizer_step_ms"]["mean"] for r in rows], 0.4, label="optimizer step")
    axes[1].set(xticks=x, title="Median step time (mean over seeds)", ylabel="ms")
    axes[1].set_xticklabels(labels, fontsize=7)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "optimizers.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sensitivity(sens, metric, out_dir):
    opts = list(sens["maps"])
    grids = [np.array(sens["maps"][o]["grid"]) for o in opts]
    lo, hi = np.nanmin(grids), np.nanmax(grids)
    fig, axes = plt.subplots(1, len(opts), figsize=(4.6 * len(opts), 3.8), squeeze=False)
    for ax, opt, grid in zip(axes[0], opts, grids):
        im = ax.imshow(grid, vmin=lo, vmax=hi, cmap="viridis", origin="lower")
        ax.set(title=opt, xlabel="weight decay", ylabel="learning rate",
               xticks=range(len(sens["weight_decay"])), yticks=range(len(sens["lr"])))
        ax.set_xticklabels([f"{w:g}" for w in sens["weight_decay"]])
        ax.set_yticklabels([f"{v:g}" for v in sens["lr"]])
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w" if v < (lo + hi) / 2 else "k", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), label=f"dev {metric}")
    path = os.path.join(out_dir, "lr_wd_sensitivity.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(study, cells) -> str:
    results = {c["id"]: load_results(os.path.join(study.output_dir, "cells", c["id"])) for c in cells}
    task = get_task(next(iter(results.values())).task)
    metric, higher = task.headline, task.higher_is_better
    rows = aggregate_main(cells, results, task)
    summary = {"task": task.name, "metric": metric, "higher_is_better": higher, "cells": [c["id"] for c in cells],
               "main": rows, "speedups": speedups(cells, results), "engines": engine_comparison(rows, metric),
               "sensitivity": sensitivity(cells, results, metric, higher)}
    write_json_atomic(os.path.join(study.output_dir, "summary.json"), summary)

    any_run = next(iter(results.values()))
    plots = [plot_main(rows, metric, study.output_dir)]
    if summary["sensitivity"]:
        plots.append(plot_sensitivity(summary["sensitivity"], metric, study.output_dir))
    mem_col = "peak GPU MiB" if rows[0]["memory_kind"] == "cuda" else "peak RSS MiB"
    lines = [f"# Optimizer study: {task.name}", "",
             f"{len(cells)} runs; device {any_run.device['type']} ({any_run.device['name']}); "
             f"torch {any_run.versions['torch']}, transformers {any_run.versions['transformers']}. "
             f"Values are mean ± std [95% t-interval] over seeds; times are each run's median step. "
             f"Rows are ranked by dev {metric} ({'higher' if higher else 'lower'} is better).", "",
             f"| engine | optimizer | seeds | dev {metric} | train {metric} | gap | step ms | optimizer ms | samples/s | {mem_col} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: task.rank_key(r[metric]["mean"])):
        train = r.get(f"train_{metric}")
        lines.append(f"| {r['engine']} | {_label(r)} | {len(r['seeds'])} | {format_mean_std(r[metric])} | "
                     f"{format_mean_std(train) if train else '-'} | "
                     f"{format_mean_std(r['generalisation_gap']) if train else '-'} | "
                     f"{format_mean_std(r['step_ms'], '.0f')} | {format_mean_std(r['optimizer_step_ms'], '.1f')} | "
                     f"{r['samples_per_s']['mean']:.1f} | {r['peak_memory_bytes']['mean'] / 2**20:,.0f} |")
    if summary["speedups"]:
        lines += ["", "Fused vs foreach, measured in this study (ratio > 1: fused is faster):", ""]
        for pair, s in summary["speedups"].items():
            lines.append(f"- {pair}: step time {format_mean_std(s['step_time_ratio'], '.3f')}, "
                         f"optimizer step {format_mean_std(s['optimizer_step_ratio'], '.2f')}")
    if summary["engines"]:
        lines += ["", "Accelerate engine vs HF Trainer (same task and config):", ""]
        for e in summary["engines"]:
            lines.append(f"- {e['optimizer']}: {metric} {e[f'{metric}_accelerate']:.4f} (accelerate) vs "
                         f"{e[f'{metric}_trainer']:.4f} (trainer); samples/s ratio accelerate/trainer "
                         f"{e['samples_per_s_ratio_accelerate_over_trainer']:.3f}")
    if summary["sensitivity"]:
        lines += ["", "## Learning rate x weight decay", "", summary["sensitivity"]["statement"]]
    lines += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    markdown = "\n".join(lines)
    with open(os.path.join(study.output_dir, "report.md"), "w") as f:
        f.write(markdown)
    return markdown
