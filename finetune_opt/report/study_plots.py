"""The study's plots: per-task dots with intervals, lr sensitivity curves, the lr x weight decay maps."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from finetune_opt.optim import get_optimizer_spec


def _save(fig, out_dir, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_dots(tasks: dict, baseline: str, out_dir: str) -> str:
    """One panel per task: every seed's dev metric, the mean with its 95% interval, the baseline's
    mean (dashed) and the trivial baseline (dotted)."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5, 1.1 * len(next(iter(tasks.values()))["main"])) * len(tasks),
                                                     4.2), squeeze=False)
    for ax, t in zip(axes[0], tasks.values()):
        metric, rows = t["metric"], t["main"]
        for i, r in enumerate(rows):
            s = r[metric]
            err = None if s["std"] is None else [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]
            ax.errorbar(i, s["mean"], yerr=err, fmt="o", color="tab:blue", capsize=5)
            ax.scatter([i] * len(s["values"]), s["values"], color="tab:blue", alpha=0.35, s=12)
        base = next((r for r in rows if r["optimizer"] == baseline), None)
        if base:
            ax.axhline(base[metric]["mean"], ls="--", color="tab:orange", lw=1, label=f"{baseline} mean")
        if t["trivial_baseline"] is not None:
            ax.axhline(t["trivial_baseline"], ls=":", color="grey", lw=1, label="trivial baseline")
        ax.set(title=f"{t['label']}: dev {metric} (mean, 95% CI, seeds)", ylabel=metric, xticks=range(len(rows)))
        ax.set_xticklabels([f"{r['optimizer']}\n{r['engine']}" if r["engine"] != "accelerate" else r["optimizer"]
                            for r in rows], rotation=30, fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, "optimizers.png")


def plot_lr_curves(tasks: dict, out_dir: str) -> str:
    """One panel per task: held-out metric against lr / the optimizer's registry default, one line
    per optimizer, the chosen lr circled."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4), squeeze=False)
    for ax, t in zip(axes[0], tasks.values()):
        for opt, s in t["tuning"].items():
            default = get_optimizer_spec(opt).default_lr
            lrs = [float(lr) for lr in s["curve"]]
            line, = ax.plot([lr / default for lr in lrs], list(s["curve"].values()), "o-", label=opt, ms=4)
            ax.scatter(s["lr"] / default, s["curve"][f"{s['lr']:g}"], s=120, facecolors="none",
                       edgecolors=line.get_color())
        ax.set(xscale="log", xlabel="lr / the optimizer's default lr", ylabel=f"held-out {t['metric']}",
               title=f"{t['label']}: lr sensitivity (chosen circled)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, "lr_sensitivity.png")


def plot_sensitivity(sens: dict, out_dir: str) -> str:
    """lr x weight decay heatmaps, one per optimizer, on one colour scale; the optimum boxed."""
    opts = list(sens["maps"])
    grids = [np.array(sens["maps"][o]["grid"]) for o in opts]
    lo, hi = np.nanmin(grids), np.nanmax(grids)
    fig, axes = plt.subplots(1, len(opts), figsize=(4.6 * len(opts), 3.8), squeeze=False)
    for k, (ax, opt, grid) in enumerate(zip(axes[0], opts, grids)):
        im = ax.imshow(grid, vmin=lo, vmax=hi, cmap="viridis", origin="lower")
        ax.set(title=opt, xlabel="weight decay", ylabel="learning rate" if k == 0 else None,  # shared rows
               xticks=range(len(sens["weight_decay"])), yticks=range(len(sens["lr"])))
        ax.set_xticklabels([f"{w:g}" for w in sens["weight_decay"]])
        ax.set_yticklabels([f"{v:g}" for v in sens["lr"]])
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w" if v < (lo + hi) / 2 else "k", fontsize=8)
        best = sens["maps"][opt]["optimum"]
        i, j = sens["lr"].index(best["lr"]), sens["weight_decay"].index(best["weight_decay"])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
    fig.colorbar(im, ax=axes[0].tolist(), label=f"dev {sens['metric']}, {sens['task']} (optimum boxed)")
    return _save(fig, out_dir, "lr_wd_sensitivity.png")
