"""Per-rank memory and step time of one fine-tuning job on 1 process, 2-process DDP and 2-process
FSDP2, launched as users launch them (`accelerate launch --config_file accelerate_configs/<x>.yaml`).

    python benchmarks/distributed.py --data-dir ../shared/data/sst2 --rounds 2 --out benchmarks/results/cpu_2core/distributed

The job is the SST-2 recipe with all-MiniLM-L6-v2 (22.7M parameters) at the same global batch
(32 on one process, 16 per rank on two), fused AdamW, fp32. Every configuration runs as its own
launch, in alternating order within a round; ratios are taken within a round. Per rank, from each
run's results.json: parameters, gradients and optimizer state as the memory breakdown measured them
(the tensors' own bytes on that rank) beside the prediction, the process's peak RSS, and the median
step time. On a CPU the two ranks share the machine's cores, so 2-process step times say what
sharding costs in communication and bookkeeping, not what two GPUs would gain.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"1 process": ("single_gpu.yaml", 1), "DDP x2": ("multi_gpu.yaml", 2), "FSDP2 x2": ("fsdp2.yaml", 2)}
COMPONENTS = ("parameters", "gradients", "optimizer_state")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(name, args, out_dir) -> dict:
    config, processes = CONFIGS[name]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           os.path.join(REPO, "accelerate_configs", config), "--num_processes", str(processes),
           "--mixed_precision", "no", "--main_process_port", str(free_port()),
           os.path.join(REPO, "recipes/finetune_glue.py"), "--config", "sst2",
           f"data_dir={args.data_dir}", f"max_steps={args.steps}", f"batch_size={args.global_batch // processes}",
           "optimizer=adamw_fused", "timing_warmup_steps=3", "log_with=none", "eval_examples=64",
           f"seed={args.seed}", f"output_dir={out_dir}", *args.overrides]
    # one intra-op thread per rank: two ranks then use the machine's two cores, as one process with two would
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // processes))}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(f"{name} failed:\n{p.stderr[-3000:]}")
    with open(os.path.join(out_dir, "results.json")) as f:
        return json.load(f)


def row(name, r) -> dict:
    b = r["memory"]["breakdown"]
    return {"config": name, "distribution": r["distribution"]["type"], "processes": r["device"]["processes"],
            **{f"{c}_mib": b["measured"][c] / 2**20 for c in COMPONENTS},
            **{f"{c}_predicted_mib": b["predicted"][c] / 2**20 for c in COMPONENTS},
            "peak_rss_mib_per_rank": [p["peak_memory_bytes"] / 2**20 for p in r["per_rank"]],
            "step_ms_median_per_rank": [p["step_ms_median"] for p in r["per_rank"]],
            "samples_per_s": r["throughput"]["samples_per_s"], "accuracy": r["metrics"].get("accuracy")}


def table(rows_by_round: list[dict]) -> str:
    names = list(CONFIGS)
    lines = ["| config | params MiB/rank | grads MiB/rank | state MiB/rank (predicted) | model state x 1 process "
             "| peak RSS MiB/rank | step ms (median) | step time x 1 process (range) | samples/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        runs = [rnd[name] for rnd in rows_by_round]
        first = runs[0]
        model_state = sum(first[f"{c}_mib"] for c in COMPONENTS)
        single = sum(rows_by_round[0]["1 process"][f"{c}_mib"] for c in COMPONENTS)
        step = [statistics.median(r["step_ms_median_per_rank"]) for r in runs]
        ratios = [s / rnd["1 process"]["step_ms_median_per_rank"][0] for s, rnd in zip(step, rows_by_round)]
        lines.append(
            f"| {name} | {first['parameters_mib']:.1f} | {first['gradients_mib']:.1f} | "
            f"{first['optimizer_state_mib']:.1f} ({first['optimizer_state_predicted_mib']:.1f}) | "
            f"{model_state / single:.2f} | {max(max(r['peak_rss_mib_per_rank']) for r in runs):.0f} | "
            f"{statistics.median(step):.0f} | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | "
            f"{statistics.median(r['samples_per_s'] for r in runs):.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("overrides", nargs="*", help="more recipe overrides, e.g. model_config={...} (tests)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rounds = []
    for r in range(args.rounds):
        order = list(CONFIGS)[r % len(CONFIGS):] + list(CONFIGS)[:r % len(CONFIGS)]  # rotate who goes first
        with tempfile.TemporaryDirectory() as tmp:
            rounds.append({name: row(name, launch(name, args, os.path.join(tmp, f"r{r}-{i}")))
                           for i, name in enumerate(order)})
        print(f"round {r + 1}: " + ", ".join(f"{n} {rounds[-1][n]['samples_per_s']:.1f}/s" for n in order), flush=True)
    text = table(rounds)
    with open(os.path.join(args.out, "distributed.json"), "w") as f:
        json.dump({"args": vars(args), "rounds": rounds}, f, indent=1)
    with open(os.path.join(args.out, "distributed.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
