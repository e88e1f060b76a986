"""Aggregate a study's cells into summary.json, report.md and PNG plots.

Everything is recomputed from the cells' results.json files, so a study that was interrupted and
resumed yields a summary of the same form as one that ran straight through.
"""

import json
import math
import os
from collections import defaultdict

import numpy as np

from finetune_opt.config.run_config import RunConfig
from finetune_opt.data.loading import load_task
from finetune_opt.errors import ConfigError
from finetune_opt.measure.timing import peak_bytes
from finetune_opt.metrics.loading import compute_metrics
from finetune_opt.measure.results import write_json_atomic
from finetune_opt.study.statistics import (
    format_interval,
    format_mean_std,
    least_significant_difference,
    mean_std_ci,
    paired_difference,
)
from finetune_opt.study.cells import load_cell
from finetune_opt.report.study_plots import plot_dots, plot_lr_curves, plot_sensitivity
from finetune_opt.tasks import REGRESSION, get_task


def _params_label(params: dict) -> str:
    return "".join(f", {k}={v:g}" if isinstance(v, float) else f", {k}={v}" for k, v in params.items())


def _label(row):
    return f"{row['optimizer']} ({row['implementation']}{_params_label(row['params'])})"


def _axes_key(params: dict) -> str:
    """Params that define a comparison: everything but the lr (tuned per optimizer)."""
    return json.dumps({k: v for k, v in params.items() if k != "lr"}, sort_keys=True)


def trivial_baseline(config: dict, task) -> float:
    """The headline metric of a constant prediction on the run's eval set: the majority class (its
    accuracy; MCC and F1 of class 1 follow), or for regression the mean target (an undefined
    correlation, counted as 0)."""
    cfg = RunConfig(**config)
    data = load_task(cfg.task, cfg.data, cfg.loop.seed)
    labels = np.asarray(data.splits["eval"]["label"])
    constant = labels.mean() if task.problem_type == REGRESSION else np.bincount(labels).argmax()
    value = compute_metrics([task.headline], np.full(len(labels), constant), labels)[task.headline]
    return 0.0 if math.isnan(value) else value


def steps_to_target(history: list, target: float):
    """The first logged step whose mean training loss is <= target (None: never reached)."""
    return next((h["step"] for h in history if h["loss"] <= target), None)


def aggregate_main(cells, results, task):
    """One row per (engine, optimizer, params): the headline metric and costs over seeds."""
    metric = task.headline
    groups = defaultdict(list)
    for c in cells:
        groups[(c["engine"], c["optimizer"], json.dumps(c["params"], sort_keys=True))].append(results[c["id"]])
    rows = []
    for (engine, optimizer, params), runs in groups.items():
        row = {"engine": engine, "optimizer": optimizer, "implementation": runs[0]["optimizer"]["implementation"],
               "params": json.loads(params), "seeds": [r["config"]["loop"]["seed"] for r in runs],
               metric: mean_std_ci([r["metrics"][metric] for r in runs]),
               "step_ms": mean_std_ci([r["timing"]["step_ms"]["median"] for r in runs]),
               "optimizer_step_ms": mean_std_ci([r["timing"]["optimizer_step_ms"]["median"] for r in runs]),
               "samples_per_s": mean_std_ci([r["throughput"]["samples_per_s"] for r in runs]),
               "peak_memory_bytes": mean_std_ci([peak_bytes(r["memory"]) for r in runs]),
               "memory_kind": runs[0]["memory"]["kind"],
               "optimizer_state_bytes": runs[0]["memory"]["optimizer_state_bytes"],
               "final_train_loss": [r["final_train_loss"] for r in runs], "histories": [r["history"] for r in runs]}
        train_key = f"train_{metric}"
        if all(train_key in r["metrics"] for r in runs):
            row[train_key] = mean_std_ci([r["metrics"][train_key] for r in runs])
            # Generalisation gap: train minus dev (for perplexity: dev minus train), per seed.
            sign = 1 if task.higher_is_better else -1
            row["generalisation_gap"] = mean_std_ci([sign * (r["metrics"][train_key] - r["metrics"][metric]) for r in runs])
        rows.append(row)
    return rows


def compare_to_baseline(rows, baseline: str, task) -> None:
    """Adds to each non-baseline row the paired difference of its dev metric from the baseline's
    (same engine, axes and seed) with a verdict, and the steps each took to reach the baseline's
    mean final training loss."""
    metric = task.headline
    base = {(r["engine"], _axes_key(r["params"])): r for r in rows if r["optimizer"] == baseline}
    for r in rows:
        twin = base.get((r["engine"], _axes_key(r["params"])))
        if twin is None:
            continue
        target = float(np.mean(twin["final_train_loss"]))
        reached = [steps_to_target(h, target) for h in r["histories"]]
        r["steps_to_baseline_loss"] = {"target": target, "steps": reached}
        if r is twin:
            continue
        theirs = dict(zip(twin["seeds"], twin[metric]["values"]))
        seeds = [s for s in r["seeds"] if s in theirs]
        ours = dict(zip(r["seeds"], r[metric]["values"]))
        r["vs_baseline"] = {"baseline": baseline, "seeds": seeds,
                            **paired_difference([ours[s] for s in seeds], [theirs[s] for s in seeds],
                                                task.higher_is_better)}


def speedups(cells, results):
    """adamw (its default, foreach) over adamw_fused, per seed and engine: same study, same data."""
    by_key = {(c["engine"], c["optimizer"], c["seed"], _axes_key(c["params"])): results[c["id"]] for c in cells}
    out = defaultdict(lambda: {"step_time_ratio": [], "optimizer_step_ratio": []})
    for (engine, opt, seed, params), r in by_key.items():
        fused = by_key.get((engine, "adamw_fused", seed, params))
        if opt == "adamw" and fused:
            pair = f"{engine}: adamw ({r['optimizer']['implementation']}) / adamw_fused (fused)"
            out[pair]["step_time_ratio"].append(r["timing"]["step_ms"]["median"] / fused["timing"]["step_ms"]["median"])
            out[pair]["optimizer_step_ratio"].append(r["timing"]["optimizer_step_ms"]["median"]
                                                     / fused["timing"]["optimizer_step_ms"]["median"])
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


def sensitivity(cells, results, task, trivial):
    """The lr x weight decay map per optimizer (mean over seeds), its optimum, and whether the best
    weight decay moves with the lr."""
    metric, higher = task.headline, task.higher_is_better
    if not cells:
        return None
    lrs = sorted({c["params"]["lr"] for c in cells})
    wds = sorted({c["params"]["weight_decay"] for c in cells})
    maps, statements = {}, []
    for opt in dict.fromkeys(c["optimizer"] for c in cells):
        grid = np.full((len(lrs), len(wds)), np.nan)
        per_cell = []  # each cell's values over seeds, for the seed noise
        for i, lr in enumerate(lrs):
            for j, wd in enumerate(wds):
                vals = [results[c["id"]]["metrics"][metric] for c in cells if c["id"] in results
                        and c["optimizer"] == opt and c["params"] == {"lr": lr, "weight_decay": wd}]
                grid[i, j] = np.mean(vals) if vals else np.nan
                per_cell.append(vals)
        pick = np.nanargmax if higher else np.nanargmin
        best = {lr: wds[int(pick(grid[i]))] for i, lr in enumerate(lrs)}
        spread = {lr: float(np.nanmax(grid[i]) - np.nanmin(grid[i])) for i, lr in enumerate(lrs)}
        i, j = np.unravel_index(int(pick(grid)), grid.shape)
        optimum = {"lr": lrs[i], "weight_decay": wds[j], metric: float(grid[i, j]),
                   "learned": bool(grid[i, j] > trivial if higher else grid[i, j] < trivial)}
        noise = least_significant_difference(per_cell)
        # Only where the weight decays differ by more than seed noise is a "best" one determined.
        decided = {lr: wd for lr, wd in best.items() if noise and spread[lr] > noise["lsd"]}
        maps[opt] = {"grid": grid.tolist(), "best_weight_decay_per_lr": best,
                     "spread_over_weight_decay_per_lr": spread, "optimum": optimum, "seed_noise": noise,
                     "best_weight_decay_beyond_noise": decided}
        if noise is None:
            moves = "one seed per cell: seed noise unknown"
        elif not decided:
            moves = "at no lr do the weight decays differ beyond seed noise"
        else:
            moves = (f"beyond seed noise at lr {', '.join(f'{lr:g}' for lr in decided)}, where it is "
                     + ("the same" if len(set(decided.values())) == 1 else "not the same"))
        statements.append(
            f"{opt}: best weight decay per lr " + ", ".join(f"{lr:g}->{wd:g}" for lr, wd in best.items())
            + f"; {metric} range across weight decays " + ", ".join(f"{s:.3f}" for s in spread.values())
            + " at those lrs"
            + (f" (seed noise: differences below {noise['lsd']:.3f} are not resolved, Fisher's LSD at 95% from "
               f"the pooled seed std {noise['pooled_std']:.4f}, df {noise['df']})" if noise else "")
            + f"; {moves}. Optimum {metric} {optimum[metric]:.3f} at lr {optimum['lr']:g}, wd "
            + f"{optimum['weight_decay']:g} ({'above' if optimum['learned'] else 'NOT above'} the trivial "
            + f"baseline {trivial:.3f}).")
    return {"task": task.name, "metric": metric, "lr": lrs, "weight_decay": wds, "trivial_baseline": trivial, "maps": maps,
            "statement": " ".join(statements)}


def summarise_task(study, label, cells, results, selection):
    ok = {c["id"]: results[c["id"]] for c in cells if "failed" not in results[c["id"]]}
    main = [c for c in cells if c["group"] == "main" and c["id"] in ok]
    task = get_task(next(r["task"] for r in ok.values()))
    rows = aggregate_main(main, ok, task)
    compare_to_baseline(rows, study.baseline, task)
    trivial = trivial_baseline(ok[main[0]["id"]]["config"], task) if main else None
    for r in rows:
        r["beats_trivial_baseline"] = bool(task.rank_key(r[task.headline]["mean"]) < task.rank_key(trivial))
    tuned = {opt: {"lr": s["lr"], "curve": {f"{lr:g}": v for lr, v in s["curve"].items()}, "edge": grid_edge(s)}
             for (t, opt), s in selection.items() if t == label}
    return {"label": label, "task": task.name, "metric": task.headline, "higher_is_better": task.higher_is_better,
            "trivial_baseline": trivial, "main": rows, "tuning": tuned,
            "speedups": speedups(main, ok), "engines": engine_comparison(rows, task.headline),
            "failed": {c["id"]: results[c["id"]]["failed"] for c in cells if c["id"] not in ok}}


def grid_edge(selection: dict) -> str | None:
    """"top" / "bottom" when the selected lr is the grid's largest / smallest point (of several)."""
    lrs = sorted(float(lr) for lr in selection["curve"])
    if len(lrs) < 2:
        return None
    return "top" if selection["lr"] == lrs[-1] else "bottom" if selection["lr"] == lrs[0] else None


def _row_line(r, metric, mem_col_mib):
    vs = r.get("vs_baseline")
    reach = r.get("steps_to_baseline_loss")
    reached = [s for s in reach["steps"] if s is not None] if reach else []
    steps = "-" if not reach else (f"{int(np.median(reached))}" if len(reached) == len(reach["steps"])
                                   else f"{len(reached)}/{len(reach['steps'])} seeds reach it")
    return (f"| {r['engine']} | {_label(r)} | {len(r['seeds'])} | {format_mean_std(r[metric])} | "
            f"{format_interval(vs) + ' ' + vs['verdict'] if vs else '(baseline)'} | "
            f"{'yes' if r['beats_trivial_baseline'] else '**no**'} | {steps} | "
            f"{format_mean_std(r['step_ms'], '.0f')} | {format_mean_std(r['optimizer_step_ms'], '.1f')} | "
            f"{mem_col_mib(r):,.0f} | {r['optimizer_state_bytes'] / 2**20:,.1f} |")


def _summary_table(tasks, study):
    labels = list(tasks)
    lines = ["| optimizer | " + " | ".join(f"{t} ({tasks[t]['metric']})" for t in labels) + " |",
             "|---|" + "---|" * len(labels)]
    for opt in study.optimizers:
        cells = []
        for t in labels:
            r = next((r for r in tasks[t]["main"] if r["optimizer"] == opt), None)
            if r is None:
                cells.append("-")
                continue
            vs = r.get("vs_baseline")
            cells.append(f"{format_interval(r[tasks[t]['metric']], '.3f')}"
                         + (f"; Δ {format_interval(vs)}: {vs['verdict']}" if vs else " (baseline)"))
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    return lines


def write_report(study, tune, cells, selection, missing=()) -> str:
    """missing: ids of the cells not finished (a --report-only report of a study stopped part-way)."""
    results = {c["id"]: load_cell(study, c) for c in tune + cells}
    any_run = next((r for r in results.values() if "failed" not in r), None)
    if any_run is None:
        raise ConfigError(f"every finished cell of {study.output_dir} stopped on non-finite losses: "
                          f"nothing to report (see the cells' failed.json)")
    # a task whose every finished main cell stopped (non-finite losses) has nothing to summarise
    labels = list(dict.fromkeys(c["task"] for c in cells if c["group"] == "main" and "failed" not in results[c["id"]]))
    tasks = {label: summarise_task(study, label, [c for c in cells if c["task"] == label and c["group"] == "main"],
                                   results, selection) for label in labels}
    sens_cells = [c for c in cells if c["group"] == "sensitivity"]
    sens = None
    ok = {c["id"]: results[c["id"]] for c in sens_cells if "failed" not in results[c["id"]]}
    if ok:
        task = get_task(next(iter(ok.values()))["task"])
        sens = sensitivity(sens_cells, ok, task, trivial_baseline(next(iter(ok.values()))["config"], task))
    summary = {"baseline": study.baseline, "optimizers": study.optimizers, "seeds": study.seeds,
               "holdout_examples": (study.tuning or {}).get("holdout_examples"),
               "cells": [c["id"] for c in tune + cells], "missing_cells": list(missing), "partial": bool(missing),
               "tasks": tasks, "sensitivity": sens}
    for t in tasks.values():  # the per-run loss histories stay in the cells, not in the summary
        for r in t["main"]:
            r.pop("histories")
    write_json_atomic(os.path.join(study.output_dir, "summary.json"), summary)

    plots = [plot_dots(tasks, study.baseline, study.output_dir)] if tasks else []
    if selection and tasks:
        plots.append(plot_lr_curves(tasks, study.output_dir))
    if sens:
        plots.append(plot_sensitivity(sens, study.output_dir))
    lines = [f"# Optimizer study: {', '.join(t['task'] for t in tasks.values())}", "",
             f"{len(tune) + len(cells)} runs; device {any_run['device']['type']} ({any_run['device']['name']}); "
             f"torch {any_run['versions']['torch']}, transformers {any_run['versions']['transformers']}. "
             f"Values are mean ± std [95% t-interval] over seeds; Δ is the mean paired difference from "
             f"{study.baseline} (same seed) with its 95% t-interval; the verdict reads the interval only.", ""]
    if missing:
        lines += [f"**PARTIAL**: {len(tune) + len(cells)} cells finished, {len(missing)} not yet run (listed in "
                  f"summary.json's missing_cells); rerun the study command to finish them.", ""]
    if selection:
        lines += [f"Each optimizer's lr was chosen per task on {study.tuning['holdout_examples']} examples held "
                  f"out of the training split (the dev set reported below was not read), from a grid around "
                  f"its registry default; then seeds {', '.join(map(str, study.seeds))} ran at that lr.", ""]
    lines += ["## Summary", ""] + _summary_table(tasks, study)
    for t in tasks.values():
        lines += _task_section(t, study)
    if sens:
        lines += ["", f"## Learning rate x weight decay ({sens['task']})", "", sens["statement"]]
    lines += [""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    markdown = "\n".join(lines)
    with open(os.path.join(study.output_dir, "report.md"), "w") as f:
        f.write(markdown)
    return markdown


def _task_section(t, study):
    metric = t["metric"]
    kind = t["main"][0]["memory_kind"] if t["main"] else "cpu"

    def mem(r):
        return r["peak_memory_bytes"]["mean"] / 2**20

    lines = ["", f"## {t['label']}: dev {metric} ({'higher' if t['higher_is_better'] else 'lower'} is better)", "",
             f"Trivial baseline (a constant prediction on the dev set): {t['trivial_baseline']:.4f}. "
             f"'steps to loss' is the median logged step at which a run's training loss first fell to "
             f"{study.baseline}'s mean final loss.", "",
             f"| engine | optimizer | seeds | dev {metric} | Δ vs {study.baseline} | beats trivial | steps to loss | "
             f"step ms | optimizer ms | {'peak GPU MiB' if kind == 'cuda' else 'peak RSS MiB'} | state MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = sorted(t["main"], key=lambda r: get_task(t["task"]).rank_key(r[metric]["mean"]))
    lines += [_row_line(r, metric, mem) for r in rows]
    if t["tuning"]:
        lines += ["", "Learning-rate selection (held-out " + metric + ", mean over tuning seeds; chosen in bold):", ""]
        for opt, s in t["tuning"].items():
            edge = s["edge"]  # (summarise_task's)
            lines.append(f"- {opt}: " + ", ".join(
                (f"**{lr}: {v:.4f}**" if float(lr) == s["lr"] else f"{lr}: {v:.4f}") for lr, v in s["curve"].items())
                + (f" (the {edge} of the grid: the best lr may lie beyond it)" if edge else ""))
    for pair, s in t["speedups"].items():
        lines.append(f"- {pair}: step time {format_mean_std(s['step_time_ratio'], '.3f')}, "
                     f"optimizer step {format_mean_std(s['optimizer_step_ratio'], '.2f')}")
    for e in t["engines"]:
        lines.append(f"- {e['optimizer']}: {metric} {e[f'{metric}_accelerate']:.4f} (accelerate) vs "
                     f"{e[f'{metric}_trainer']:.4f} (trainer); samples/s ratio accelerate/trainer "
                     f"{e['samples_per_s_ratio_accelerate_over_trainer']:.3f}")
    for cell, message in t["failed"].items():
        lines.append(f"- stopped: {cell}: {message}")
    return lines
