"""One fine-tuning job (MiniLM on SST-2 by default, the recipe's config) through this project's
engine with each speed option on or off (length-grouped batches, the last layer for [CLS] only, bf16,
torch.compile), transformers.Trainer (its default random batches, and its group_by_length sampler)
and a bare PyTorch loop: samples/s, real tokens/s, padding share and dev accuracy, one seed per round.

    OMP_NUM_THREADS=1 python benchmarks/end_to_end.py --data-dir ../shared/data/sst2 --steps 150 --rounds 3

Every contender runs as its own process (the recipes exactly as a user runs them; the bare loop as
this script's --bare mode), in alternating order within each round, so that a machine whose load
drifts slows every contender alike; round r uses seed `--seed + r` for all of them (the same data
subset, initial head and batches' randomness per contender family). Throughput is the recipes' own
measurement: samples over the summed times of the steps after the warm-up ones, each step running
from the end of the previous one (data loading included), evaluation excluded. Ratios are taken
within a round, then the median and range over rounds reported.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "sst2"  # the packaged config (finetune_opt/config/builtin/sst2.yaml)
GLUE, TRAINER = os.path.join(REPO, "recipes/finetune_glue.py"), os.path.join(REPO, "recipes/trainer_glue.py")

# name -> (command after the interpreter, overrides). Recipes take RunConfig overrides. "engine" has
# every speed option off; the HF contenders run the model unchanged (last_layer_cls_only=false).
OFF = ["group_by_length=false", "last_layer_cls_only=false"]
GROUPED = ["group_by_length=true", "last_layer_cls_only=false"]
GROUPED_CLS_ONLY = ["group_by_length=true", "last_layer_cls_only=true"]  # the engine's CPU default
CONTENDERS = {
    "engine": (GLUE, OFF),
    "engine grouped": (GLUE, GROUPED),
    "engine grouped cls-only": (GLUE, GROUPED_CLS_ONLY),
    "engine grouped cls-only bf16": (GLUE, [*GROUPED_CLS_ONLY, "mixed_precision=bf16"]),
    "engine grouped cls-only compiled": (GLUE, [*GROUPED_CLS_ONLY, "compile_model=true"]),
    "trainer": (TRAINER, OFF),
    "trainer group_by_length": (TRAINER, GROUPED),
    "bare loop": (os.path.abspath(__file__), ["--bare", *OFF]),
}
DEFAULT_CONTENDERS = [c for c in CONTENDERS if not c.endswith("compiled")]
BASELINES = ("trainer", "trainer group_by_length", "engine")


def bare_loop(cfg):
    """The same job without Accelerate or the Trainer: tokenized data, dynamic padding, shuffled
    batches, the registry's optimizer, linear schedule, clipping; results.json with the fields the
    driver reads (timed as the recipes time a step)."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from finetune_opt.train.classification import classification_model, collator, load_classification, task_metrics
    from finetune_opt.measure.timing import StepTimer
    from finetune_opt.models.loading import load_tokenizer
    from finetune_opt.optim import create_optimizer
    from finetune_opt.measure.results import write_json_atomic

    torch.manual_seed(cfg.loop.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    data = load_classification(cfg.task, cfg.data, cfg.loop.seed, tokenizer,
                               lambda: __import__("contextlib").nullcontext())
    collate = collator(tokenizer, cfg.precision)
    model = classification_model(cfg.model, data, cfg.precision.last_layer_cls_only).to(device).train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision.mixed_precision == "bf16")
    opt = create_optimizer(cfg.optimizer.name, model, implementation=cfg.optimizer.implementation,
                           **cfg.optimizer.hyperparams)
    sched = get_scheduler(cfg.loop.scheduler, opt, num_training_steps=cfg.loop.max_steps,
                          num_warmup_steps=math.ceil(cfg.loop.warmup_ratio * cfg.loop.max_steps))
    loader = DataLoader(data.splits["train"], batch_size=cfg.loop.batch_size, shuffle=True, collate_fn=collate)
    timer = StepTimer(device, cfg.measure.timing_warmup_steps)
    batches = (b for _ in range(cfg.loop.max_steps) for b in loader)  # epochs, as many as needed
    timer.begin_step()
    for _ in range(cfg.loop.max_steps):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.loop.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        timer.end_step(len(batch["labels"]), batch["attention_mask"].sum(), batch["input_ids"].numel())  # read at the end
        timer.begin_step()
    model.eval()
    with torch.no_grad():
        logits = [model(**{k: v.to(device) for k, v in b.items()}).logits.float().cpu()
                  for b in DataLoader(data.splits["eval"], batch_size=cfg.loop.eval_batch_size, collate_fn=collate)]
    metrics = task_metrics(data.task, torch.cat(logits), torch.tensor(data.splits["eval"]["labels"]))
    timing = timer.summary()
    write_json_atomic(os.path.join(cfg.output.output_dir, "results.json"), {
        "metrics": metrics, "timing": timing,
        "config": {"loop": {"batch_size": cfg.loop.batch_size, "grad_accum": 1}},
        "throughput": {k: timing[k] for k in ("samples_per_s", "tokens_per_s", "padding_share")}})


def run_contender(name, common, seed, out_dir, log):
    script, overrides = CONTENDERS[name]
    output_dir = run_dir(out_dir, name, seed)
    # the contender's own overrides last: they win over the common ones
    cmd = [sys.executable, script, "--config", CONFIG, *common, *overrides, f"seed={seed}", f"output_dir={output_dir}"]
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    log.write(f"$ {' '.join(cmd)}\n{p.stderr[-2000:]}\n")
    if p.returncode:
        raise SystemExit(f"{name} (seed {seed}) failed:\n{p.stderr[-3000:]}")
    return {**read_run(output_dir), "process_s": time.perf_counter() - start}


def run_dir(runs_dir, name, seed) -> str:
    return os.path.join(runs_dir, f"{name.replace(' ', '_')}-seed{seed}")


def read_run(output_dir) -> dict:
    """One contender's run, from the results.json its recipe wrote."""
    with open(os.path.join(output_dir, "results.json")) as f:
        r = json.load(f)
    t, timing = r["throughput"], r["timing"]
    # Every step, the warm-up ones too: the Trainer's group_by_length puts its longest batches first
    # (to meet an out-of-memory at once), so its timed steps, which start after the warm-up, hold
    # shorter examples than its run does; over all steps both samplers cover the same examples.
    per_step = r["config"]["loop"]["batch_size"] * r["config"]["loop"]["grad_accum"]
    timed_s = timing["timed_steps"] * per_step / t["samples_per_s"]
    all_steps = (timing["timed_steps"] + timing["warmup_steps_excluded"]) * per_step / (timed_s + timing["warmup_s"])
    return {"samples_per_s": t["samples_per_s"], "samples_per_cpu_s": timing["samples_per_cpu_s"],
            "samples_per_s_all_steps": all_steps,
            "tokens_per_s": t["tokens_per_s"],
            "padding_share": t["padding_share"], "accuracy": r["metrics"]["accuracy"],
            "warmup_s": timing["warmup_s"]}


def finished_rounds(runs_dir, contenders, first_seed) -> list[dict]:
    """The rounds of an earlier, interrupted run whose every contender finished (--table-from)."""
    rounds = []
    while all(os.path.isfile(os.path.join(run_dir(runs_dir, n, first_seed + len(rounds)), "results.json"))
              for n in contenders):
        rounds.append({n: read_run(run_dir(runs_dir, n, first_seed + len(rounds))) for n in contenders})
    return rounds


def summarise(rounds, contenders):
    def over_rounds(name, key):
        return [r[name][key] for r in rounds]

    rows = {}
    for name in contenders:
        acc = over_rounds(name, "accuracy")
        rows[name] = {
            "samples_per_s_median": statistics.median(over_rounds(name, "samples_per_s")),
            "samples_per_cpu_s_median": statistics.median(over_rounds(name, "samples_per_cpu_s")),
            "samples_per_s_all_steps_median": statistics.median(over_rounds(name, "samples_per_s_all_steps")),
            "tokens_per_s_median": statistics.median(over_rounds(name, "tokens_per_s")),
            "padding_share_mean": statistics.fmean(over_rounds(name, "padding_share")),
            "accuracy_mean": statistics.fmean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "accuracy_min": min(acc), "accuracy_max": max(acc),
            "warmup_s_median": statistics.median(over_rounds(name, "warmup_s")),
        }
        for base in BASELINES:
            for clock, key in (("", "samples_per_s"), (" cpu", "samples_per_cpu_s"),
                               (" all steps", "samples_per_s_all_steps"), (" tokens", "tokens_per_s")):
                if base in contenders:
                    ratios = [r[name][key] / r[base][key] for r in rounds]
                    rows[name][f"vs {base}{clock}"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                       "max": max(ratios)}
    return rows


def load_text(env) -> str:
    load = env["load_average_1_5_15_min"]
    if load is None:
        return f"Tabled from the finished rounds of {env['table_from']} (load average not recorded)."
    return f"Load average (1 min) {load['before'][0]:.1f} before, {load['after'][0]:.1f} after."


def markdown(rows, env, a) -> str:
    bases = [b for b in BASELINES if b in rows]
    lines = [f"{env['device']}; torch {env['torch']}; OMP_NUM_THREADS={env['omp_threads']}; {env['date']}. "
             f"finetune_opt/config/builtin/sst2.yaml (MiniLM on SST-2, batch 32, length <= 64) for {a.steps} steps, {a.optimizer}"
             f"{', overrides: ' + ' '.join(a.set) if a.set else ''}; "
             f"{a.rounds} rounds = seeds {a.seed}..{a.seed + a.rounds - 1}, each contender in its own process, "
             f"alternating within a round. " + load_text(env), "",
             "Ratios: per round, then the median (range) over rounds; wall clock, and in brackets by this "
             "process's CPU time (one intra-op thread, so waiting for a shared core does not count).", "",
             "| contender | samples/s (wall) | samples per CPU s | real tokens/s | padding % | "
             "dev accuracy (mean ± std; min-max) | "
             + " | ".join(f"x {b}: wall [cpu]" for b in bases) + " | warm-up s |",
             "|---" * (6 + len(bases)) + "|---|"]

    def ratio(r, key):
        return f"{r[key]['median']:.2f} ({r[key]['min']:.2f}-{r[key]['max']:.2f})"

    for name, r in rows.items():
        ratios = " | ".join(f"{ratio(r, f'vs {b}')} [{ratio(r, f'vs {b} cpu')}]" for b in bases)
        lines.append(f"| {name} | {r['samples_per_s_median']:.1f} | {r['samples_per_cpu_s_median']:.1f} | "
                     f"{r['tokens_per_s_median']:.0f} | "
                     f"{r['padding_share_mean'] * 100:.1f} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f}; "
                     f"{r['accuracy_min']:.4f}-{r['accuracy_max']:.4f} | {ratios} | {r['warmup_s_median']:.1f} |")
    lines += ["", "The same runs over every step, warm-up included (the grouped Trainer's timed steps exclude "
              "its longest batches, which it runs first), and per real token:", "",
              "| contender | samples/s, all steps | " + " | ".join(f"x {b}: all steps [real tokens/s]" for b in bases)
              + " |", "|---|---|" + "---|" * len(bases)]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['samples_per_s_all_steps_median']:.1f} | "
                     + " | ".join(f"{ratio(r, f'vs {b} all steps')} [{ratio(r, f'vs {b} tokens')}]" for b in bases)
                     + " |")
    return "\n".join(lines) + "\n"


def main():
    if "--bare" in sys.argv:  # one bare-loop run: recipe-style arguments
        from finetune_opt.recipes.entry import recipe_main

        sys.argv.remove("--bare")
        recipe_main(bare_loop, "bare PyTorch loop")
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="dir with SST-2 train.tsv / dev.tsv")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--optimizer", default="adamw_fused")
    p.add_argument("--model", default=None, help="model for every contender (default: the config's)")
    p.add_argument("--precision", choices=["no", "bf16", "auto"], default=None,
                   help="mixed_precision for every contender but those that set their own")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--contenders", nargs="+", choices=list(CONTENDERS), default=DEFAULT_CONTENDERS)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more RunConfig overrides for every contender (e.g. train_examples=640)")
    p.add_argument("--out", default="benchmarks/results/end_to_end")
    p.add_argument("--table-from", metavar="RUNS_DIR",
                   help="table the finished rounds of an interrupted run's runs dir (printed at its start) instead "
                        "of running; the other arguments must be the ones it ran with")
    a = p.parse_args()
    if a.table_from:
        rounds = finished_rounds(a.table_from, a.contenders, a.seed)
        if not rounds:
            raise SystemExit(f"no round finished in {a.table_from}")
        a.rounds = len(rounds)
        write_tables(a, rounds, load=None)
        return

    common = [f"data_dir={os.path.abspath(a.data_dir)}", f"max_steps={a.steps}", f"timing_warmup_steps={a.warmup}",
              f"optimizer={a.optimizer}", f"log_every={a.steps}", *a.set]
    common += [f"model={a.model}"] * bool(a.model) + [f"mixed_precision={a.precision}"] * bool(a.precision)
    os.makedirs(a.out, exist_ok=True)
    runs_dir = tempfile.mkdtemp(prefix="end_to_end-")
    print(f"runs in {runs_dir} (--table-from it, should this run be cut short)", flush=True)
    load_before = os.getloadavg()  # how busy the machine was: other processes slow every contender
    rounds = []
    with open(os.path.join(runs_dir, "log.txt"), "w") as log:
        for r in range(a.rounds):
            order = a.contenders[r % len(a.contenders):] + a.contenders[:r % len(a.contenders)]  # rotate
            result = {name: run_contender(name, common, a.seed + r, runs_dir, log) for name in order}
            print(f"round {r + 1}: " + ", ".join(f"{n} {v['samples_per_s']:.1f}/s acc {v['accuracy']:.4f}"
                                                  for n, v in result.items()), flush=True)
            rounds.append(result)
    write_tables(a, rounds, load={"before": load_before, "after": os.getloadavg()})


def write_tables(a, rounds, load):
    rows = summarise(rounds, a.contenders)
    env = {"device": f"cpu ({os.cpu_count()} cores)", "torch": __import__("torch").__version__,
           "omp_threads": os.environ.get("OMP_NUM_THREADS", "unset"), "date": time.strftime("%Y-%m-%d"),
           "argv": sys.argv[1:], "load_average_1_5_15_min": load, "table_from": a.table_from}
    from finetune_opt.models.precision import native_bf16_flags
    from finetune_opt.measure.results import write_json_atomic

    env["cpu_native_bf16"] = native_bf16_flags()
    write_json_atomic(os.path.join(a.out, "end_to_end.json"), {"env": env, "args": vars(a), "rounds": rounds,
                                                                 "summary": rows})
    md = markdown(rows, env, a)
    with open(os.path.join(a.out, "end_to_end.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
