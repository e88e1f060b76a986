"""Time one optimizer step for every registry entry x implementation on real models' parameters,
and set it against the roofline this device measures in the same process.

    python benchmarks/optimizer_step.py --sets minilm-22.7M bert-base-110M gpt2-124M --out benchmarks/results/cpu_2core
    python benchmarks/optimizer_step.py --device cuda --sets minilm-22.7M bert-base-110M gpt2-124M llama-1.1B

Processes. On CPU each variant (set x dtype x optimizer x implementation) runs in its own process:
its memory figure is the process's peak RSS, which only a fresh process resets. On CUDA a process
takes one optimizer x implementation through every set and dtype (`--process-per optimizer`):
the step's added peak is read from the allocator's counters reset just before it, and the previous
set's tensors are freed first, so no peak leaks; it saves a Python + CUDA start-up (~10 s on the
GPU machine) per variant, which is what makes `benchmarks/gpu_suite.sh` fit its time. torch.compile
caches: dynamo compiles one graph per optimizer instance and gives up after 8 per step function (a
shared process once reported eager timings as "compiled"), so such a process raises the limit.
Inside a process, rounds alternate the optimizer step with the reference kernels, so machine noise
hits both alike. `--budget-s` stops starting variants after that many seconds (rows say so).

Roofline. Memory-bound steps: the bytes one step must read and write come from the entry's own
spec (`traffic_bytes`: Adam 7 parameter-sized tensors, Lion 5, Adafactor ~5, 8-bit AdamW ~4 + 2
bytes, ...), GB/s = bytes / median time, against an in-place `a.add_(b)` over the same number of
elements (3 streams) and a copy (2 streams) timed in the same rounds. Compute-bound steps (Muon's
Newton-Schulz): FLOP/s from the spec's `step_flops`, against a bf16 matmul (the dtype torch runs
Newton-Schulz in) timed in the same rounds.
"""

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from param_sets import CONFIGS, make_model  # noqa: E402

from finetune_opt.measure.timing import optimizer_state_bytes  # noqa: E402
from finetune_opt.optim import REGISTRY, create_optimizer  # noqa: E402
from finetune_opt.measure.results import write_json_atomic  # noqa: E402



def matmul_size(device) -> int:
    return 8192 if device.type == "cuda" else 1024  # a GPU needs a big product to reach its peak


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


class References:
    """The kernels a step is compared with: in-place add and copy over the parameters' element
    count (bandwidth), and a square bf16 matmul (compute)."""

    def __init__(self, numel, dtype, device, with_matmul):
        self.a, self.b = (torch.ones(numel, dtype=dtype, device=device) for _ in range(2))
        n = matmul_size(device)
        self.m = torch.randn(n, n, device=device).bfloat16() if with_matmul else None
        self.device, self.add_s, self.copy_s, self.matmul_s = device, [], [], []
        self.measure(1)  # warm

    def measure(self, repeats):
        self.add_s += timed(lambda: self.a.add_(self.b), self.device, repeats)
        self.copy_s += timed(lambda: self.a.copy_(self.b), self.device, repeats)
        if self.m is not None:
            self.matmul_s += timed(lambda: self.m @ self.m, self.device, repeats)

    def result(self) -> dict:
        nbytes = self.a.numel() * self.a.element_size()
        out = {"inplace_add_GBps": 3 * nbytes / float(np.median(self.add_s)) / 1e9,
               "copy_GBps": 2 * nbytes / float(np.median(self.copy_s)) / 1e9}
        if self.matmul_s:
            out["matmul_bf16_TFLOPs"] = 2 * self.m.shape[0] ** 3 / float(np.median(self.matmul_s)) / 1e12
        return out


def child(args, variant: dict) -> dict:
    """One variant, measured in this process; returns its row."""
    device, dtype = torch.device(args.device), getattr(torch, variant["dtype"])
    spec = REGISTRY[variant["optimizer"]]
    row = dict(variant)
    model = make_model(variant["set"], dtype, device)
    try:
        opt = create_optimizer(variant["optimizer"], model, implementation=variant["implementation"],
                               weight_decay=0.01)
        first = timed(opt.step, device, 1)[0]  # allocates state; compiles for "compiled"
        warm = timed(opt.step, device, 2)
    except Exception as e:  # e.g. a dtype or device an implementation does not take
        return {**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    numel = sum(p.numel() for p in model.parameters())
    refs = References(numel, dtype, device, with_matmul=spec.step_flops is not None)
    times = []
    for _ in range(args.rounds):
        refs.measure(args.repeats)
        times += timed(opt.step, device, args.repeats)
    t = np.array(times)
    median = float(np.median(t))
    traffic, flops = spec.traffic_bytes_for(opt.param_groups), spec.step_flops_for(opt.param_groups)
    row.update(params=numel, median_ms=median * 1e3, p10_ms=float(np.percentile(t, 10) * 1e3),
               p90_ms=float(np.percentile(t, 90) * 1e3), steps_timed=len(t), traffic_bytes=traffic,
               GBps=traffic / median / 1e9, state_bytes=optimizer_state_bytes(opt),
               state_bytes_predicted=spec.state_bytes_for(opt.param_groups), first_step_s=first,
               compile_s=first - min(warm) if variant["implementation"] == "compiled" else None, **refs.result())
    row["fraction_of_inplace_add"] = row["GBps"] / row["inplace_add_GBps"]
    if flops:
        row.update(step_flops=flops, TFLOPs=flops / median / 1e12)
        row["fraction_of_matmul"] = row["TFLOPs"] / row["matmul_bf16_TFLOPs"]
    if device.type == "cuda":  # what one more step adds above the state it starts from
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        opt.step()
        sync(device)
        row["step_peak_added_bytes"] = torch.cuda.max_memory_allocated(device) - base
    return row


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(variant: dict) -> int:
    """CPU: the peak RSS one (state-initialised) step adds, in a fresh process."""
    model = make_model(variant["set"], getattr(torch, variant["dtype"]), "cpu")
    opt = create_optimizer(variant["optimizer"], model, implementation=variant["implementation"], weight_decay=0.01)
    opt.step()  # state now allocated; the next step's own transient memory is what we want
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    opt.step()
    return (_status_kib("VmHWM") - before) * 1024


def children_main(args):
    """The child process: measure each variant given, print one JSON row per line as it ends."""
    variants = json.loads(args.variants)
    if len(variants) > 1:  # fresh optimizer instances each compile anew (see the module docstring)
        torch._dynamo.config.recompile_limit = 8 * len(variants)
    for variant in variants:
        if time.time() > args.deadline:
            row = {**variant, "error": "not run: the --budget-s time budget was spent"}
        else:
            row = memory_child(variant) if args.memory else child(args, variant)
        print(json.dumps(row), flush=True)
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()


def run_children(args, variants: list[dict], deadline: float, memory=False) -> list:
    cmd = [sys.executable, __file__, "--child", "--device", args.device, "--rounds", str(args.rounds),
           "--repeats", str(args.repeats), f"--deadline={deadline}", "--variants", json.dumps(variants)]
    # A fixed mmap threshold makes glibc hand large freed blocks back to the OS, so RSS follows
    # live memory (by default it keeps them, and a step's temporaries would hide in reused heap).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"} if memory else os.environ
    r = subprocess.run(cmd + (["--memory"] if memory else []), capture_output=True, text=True, timeout=3600, env=env)
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]  # the child prints JSON only
    if r.returncode != 0:
        error = f"child exited {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:200]}"
        rows += [{**v, "error": error} for v in variants[len(rows):]]
    return rows


def process_batches(args) -> list[list[dict]]:
    """The variants, grouped into the processes that measure them (see the module docstring)."""
    def chosen(spec):  # only what runs on this device (the rest is refused there: not timed)
        if args.implementations == ["default"]:
            wanted = [spec.default_for(args.device)]
        else:
            wanted = [i for i in spec.implementations if i in args.implementations]
        return [i for i in wanted if spec.supports(i, args.device)]
    configs = [(s, d) for s in args.sets for d in args.dtypes]
    per_optimizer = [[{"set": s, "dtype": d, "optimizer": name, "implementation": impl} for s, d in configs]
                     for name in args.optimizers for impl in chosen(REGISTRY[name])]
    if args.process_per == "optimizer":
        return per_optimizer
    return [[v] for batch in per_optimizer for v in batch]


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def markdown(rows, env) -> str:
    lines = [f"Device: {env['device']}; torch {env['torch']}; {env['date']}; threads {env['threads']}.", "",
             "| set | dtype | optimizer | impl | median ms | p10 | p90 | state MiB | GB/s | of in-place add | "
             "TFLOP/s | of bf16 matmul | step adds MiB | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['dtype']} | {r['optimizer']} | {r['implementation']} | {r['error']} "
                         "||||||||||")
            continue
        mem = r.get("step_peak_added_bytes")
        lines.append(
            f"| {r['set']} | {r['dtype']} | {r['optimizer']} | {r['implementation']} | {r['median_ms']:.1f} | "
            f"{r['p10_ms']:.1f} | {r['p90_ms']:.1f} | {r['state_bytes'] / 2**20:.1f} | {r['GBps']:.1f} | "
            f"{r['fraction_of_inplace_add']:.0%} | {_fmt(r.get('TFLOPs'), '.3f')} | "
            f"{_fmt(r.get('fraction_of_matmul'), '.0%')} | {_fmt(mem and mem / 2**20, '.0f')} | "
            f"{_fmt(r['compile_s'], '.1f')} |")
    return "\n".join(lines)


def _share(r) -> str:
    if "fraction_of_matmul" in r:
        return f"{r['fraction_of_matmul']:.0%} of bf16 matmul ({r['matmul_bf16_TFLOPs']:.2f} TFLOP/s)"
    return f"{r['fraction_of_inplace_add']:.0%} of in-place add ({r['inplace_add_GBps']:.1f} GB/s)"


def by_entry(rows, dtype="float32") -> str:
    """One line per entry and set: its implementations fastest first (steady-state median; the
    compiled ones' first-step compile time beside them), the fastest one's roofline share, and its
    step time over fused AdamW's on the same set (what README's optimizer table shows)."""
    ok = [r for r in rows if "error" not in r and r["dtype"] == dtype]
    fused = {r["set"]: r["median_ms"] for r in ok if (r["optimizer"], r["implementation"]) == ("adamw_fused", "fused")}
    lines = [f"| set | optimizer | state B/param | {dtype} step ms (impl; compile s) | fastest's roofline share | "
             "x fused AdamW |", "|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["set"], r["optimizer"]) for r in ok):
        mine = sorted((r for r in ok if (r["set"], r["optimizer"]) == key), key=lambda r: r["median_ms"])
        impls = ", ".join(f"{r['implementation']} {r['median_ms']:.0f}"
                          + (f" ({r['compile_s']:.0f} s)" if r["compile_s"] is not None else "") for r in mine)
        best = mine[0]
        ratio = f"{best['median_ms'] / fused[key[0]]:.2f}" if key[0] in fused else "-"
        lines.append(f"| {key[0]} | {key[1]} | {best['state_bytes_predicted'] / best['params']:.2f} | {impls} | "
                     f"{_share(best)} | {ratio} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    sets = list(dict.fromkeys(r["set"] for r in ok))
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 5), squeeze=False)
    for ax, set_name in zip(axes[0], sets):
        mine = sorted((r for r in ok if r["set"] == set_name), key=lambda r: r["median_ms"])
        labels = [f"{r['optimizer']} ({r['implementation']}, {r['dtype']})" for r in mine]
        ax.barh(range(len(mine)), [r["median_ms"] for r in mine], color=["tab:blue" if r["dtype"] == "float32"
                                                                         else "tab:orange" for r in mine])
        ax.set_yticks(range(len(mine)), labels, fontsize=7)
        ax.set(xscale="log", xlabel="step, median ms", title=f"{set_name} ({mine[0]['params'] / 1e6:.1f}M params)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sets", nargs="+", default=["minilm-22.7M", "bert-base-110M", "gpt2-124M"], choices=list(CONFIGS))
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--optimizers", nargs="+", default=list(REGISTRY), choices=list(REGISTRY))
    p.add_argument("--implementations", nargs="+", default=["for-loop", "foreach", "fused", "compiled"],
                   help="or 'default': each entry's default implementation only")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="steps per round")
    p.add_argument("--no-memory", action="store_true", help="skip the CPU per-variant memory processes")
    p.add_argument("--process-per", choices=["variant", "optimizer"], default=None,
                   help="one process per variant (default on CPU) or per optimizer x implementation (CUDA)")
    p.add_argument("--budget-s", type=float, default=None, help="start no variant after this many seconds")
    p.add_argument("--out", default="benchmarks/results/optimizer_step")
    # one variant in this process (used by the parent)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variants", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=math.inf, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.process_per is None:
        args.process_per = "optimizer" if args.device == "cuda" else "variant"
    return args


def main():
    args = parse_args()
    if args.child:
        children_main(args)
        return
    device = torch.device(args.device)
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
           "argv": sys.argv[1:]}
    deadline = time.time() + args.budget_s if args.budget_s else math.inf
    rows = []
    for batch in process_batches(args):
        for row in run_children(args, batch, deadline):
            if device.type == "cpu" and not args.no_memory and "error" not in row:
                variant = {k: row[k] for k in ("set", "dtype", "optimizer", "implementation")}
                peak = run_children(args, [variant], math.inf, memory=True)[0]
                row["step_peak_added_bytes"] = peak if isinstance(peak, int) else None
            rows.append(row)
            print(markdown([row], env).splitlines()[-1], flush=True)
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "optimizer_step.json"), {"env": env, "rows": rows})
    with open(os.path.join(args.out, "optimizer_step.md"), "w") as f:
        f.write(markdown(rows, env) + "\n")
    with open(os.path.join(args.out, "optimizer_step_by_entry.md"), "w") as f:
        f.write("\n\n".join(by_entry(rows, d) for d in args.dtypes) + "\n")
    plot(rows, os.path.join(args.out, "step_time_by_optimizer.png"))
    print(markdown(rows, env))


if __name__ == "__main__":
    main()
