"""Time one optimizer step for every registered factory x implementation on real models' shapes,
and set it against the bandwidth this device measures in the same run.

    python benchmarks/optimizer_step.py --sets minilm-22.7M bert-base-110M gpt2-124M --out benchmarks/results/cpu
    python benchmarks/optimizer_step.py --device cuda --dtypes float32 bfloat16 --sets minilm-22.7M gpt2-124M llama-1.1B

An Adam step streams 7 tensors of the parameter size: it reads p, g, m, v and writes p, m, v
(28 B per fp32 parameter; AMSGrad adds a read and a write of v_max). GB/s = those bytes / median
time; "of add" is that as a fraction of an in-place `a.add_(b)` over the same bytes (3 tensors),
the nearest streaming kernel the device can run. Variants are timed in interleaved rounds in one
process so that machine noise hits all of them alike.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from param_sets import CONFIGS, make_params, param_shapes  # noqa: E402

from finetune_opt.optim import REGISTRY, create_optimizer  # noqa: E402
from finetune_opt.results import write_json_atomic  # noqa: E402


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


class Bandwidth:
    """In-place add (read a, b; write a) and a device-to-device copy over `numel` elements, timed
    once per round between the optimizer variants, so all see the same machine conditions."""

    def __init__(self, numel, dtype, device):
        self.a, self.b = torch.ones(numel, dtype=dtype, device=device), torch.ones(numel, dtype=dtype, device=device)
        self.device, self.add_s, self.copy_s = device, [], []
        timed(lambda: self.a.add_(self.b), device, 2)  # warm

    def measure(self, repeats):
        self.add_s += timed(lambda: self.a.add_(self.b), self.device, repeats)
        self.copy_s += timed(lambda: self.a.copy_(self.b), self.device, repeats)

    def result(self) -> dict:
        nbytes = self.a.numel() * self.a.element_size()
        return {"inplace_add_GBps": 3 * nbytes / float(np.median(self.add_s)) / 1e9,
                "copy_GBps": 2 * nbytes / float(np.median(self.copy_s)) / 1e9}


def variants(names, implementations):
    return [(n, i) for n in names for i in REGISTRY[n].implementations if i in implementations]


def step_memory(args, set_name, dtype, name, impl) -> int | None:
    """Bytes a step adds at its peak. GPU: allocator peak over the allocation before the step.
    CPU: a fresh process's peak-RSS growth across one (state-initialised) step."""
    if args.device == "cuda":
        return None  # measured in-process, see run_set
    cmd = [sys.executable, __file__, "--memory-child", set_name, dtype, name, impl]
    # A fixed mmap threshold makes glibc hand large freed blocks back to the OS, so RSS follows
    # live memory (by default it keeps them, and a step's temporaries would hide in reused heap).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(set_name, dtype, name, impl):
    params = make_params(param_shapes(set_name), getattr(torch, dtype), "cpu")
    opt = create_optimizer(name, [{"params": params}], implementation=impl, lr=1e-4, weight_decay=0.01)
    opt.step()  # state now allocated; the next step's own transient memory is what we want
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    opt.step()
    print((_status_kib("VmHWM") - before) * 1024)


def run_set(args, set_name, dtype_name, device) -> list[dict]:
    dtype = getattr(torch, dtype_name)
    params = make_params(param_shapes(set_name), dtype, device)
    numel = sum(p.numel() for p in params)
    reference = Bandwidth(numel, dtype, device)
    rows, optimizers = [], {}
    for name, impl in variants(args.optimizers, args.implementations):
        try:
            opt = create_optimizer(name, [{"params": params}], implementation=impl, lr=1e-4, weight_decay=0.01)
            first = timed(opt.step, device, 1)[0]  # allocates state; compiles for "compiled"
            warm = timed(opt.step, device, 2)
        except Exception as e:  # e.g. a dtype an implementation does not support here
            rows.append({"set": set_name, "dtype": dtype_name, "optimizer": name, "implementation": impl,
                         "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
            continue
        optimizers[(name, impl)] = (opt, {"first_step_s": first, "compile_s": first - min(warm) if impl == "compiled" else None})
    times = {key: [] for key in optimizers}
    for _ in range(args.rounds):  # interleaved: each round times every variant once
        reference.measure(args.repeats)
        for key, (opt, _) in optimizers.items():
            times[key] += timed(opt.step, device, args.repeats)
    bw = reference.result()
    del reference
    for (name, impl), (opt, extra) in optimizers.items():
        t = np.array(times[(name, impl)])
        moved = 7 * numel * params[0].element_size() + (2 * numel * params[0].element_size() if opt.defaults["amsgrad"] else 0)
        row = {"set": set_name, "params": numel, "dtype": dtype_name, "optimizer": name, "implementation": impl,
               "median_ms": float(np.median(t) * 1e3), "p10_ms": float(np.percentile(t, 10) * 1e3),
               "p90_ms": float(np.percentile(t, 90) * 1e3), "steps_timed": len(t),
               "GBps": moved / float(np.median(t)) / 1e9, **bw, **extra}
        row["fraction_of_inplace_add"] = row["GBps"] / bw["inplace_add_GBps"]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            opt.step()
            sync(device)
            row["step_peak_added_bytes"] = torch.cuda.max_memory_allocated(device) - base
        rows.append(row)
    del optimizers
    if device.type == "cpu" and not args.no_memory:
        for row in rows:
            if "error" not in row:
                row["step_peak_added_bytes"] = step_memory(args, set_name, dtype_name, row["optimizer"], row["implementation"])
    return rows


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def markdown(rows, env) -> str:
    lines = [f"Device: {env['device']}; torch {env['torch']}; {env['date']}; threads {env['threads']}.", "",
             "| set | dtype | optimizer | impl | median ms | p10 | p90 | GB/s | of in-place add | add GB/s | step adds MiB | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['dtype']} | {r['optimizer']} | {r['implementation']} | {r['error']} |||||||")
            continue
        mem = r.get("step_peak_added_bytes")
        lines.append(f"| {r['set']} | {r['dtype']} | {r['optimizer']} | {r['implementation']} | {r['median_ms']:.1f} | "
                     f"{r['p10_ms']:.1f} | {r['p90_ms']:.1f} | {r['GBps']:.1f} | {r['fraction_of_inplace_add']:.0%} | "
                     f"{r['inplace_add_GBps']:.1f} | {_fmt(mem and mem / 2**20, '.0f')} | {_fmt(r['compile_s'], '.1f')} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = [r for r in rows if "error" not in r and r["optimizer"] == "adamw"]
    colors = {"for-loop": "tab:brown", "foreach": "tab:red", "fused": "tab:green", "compiled": "tab:blue"}
    for dtype, style in zip(sorted({r["dtype"] for r in ok}, reverse=True), ["-", "--"]):  # float32 solid
        for impl, color in colors.items():
            pts = sorted((r["params"], r["median_ms"]) for r in ok if r["implementation"] == impl and r["dtype"] == dtype)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=color, linestyle=style, label=f"{impl} ({dtype})")
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="AdamW step, median ms",
           title="Optimizer step time vs parameter count")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        return memory_child(*sys.argv[2:6])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sets", nargs="+", default=["minilm-22.7M", "bert-base-110M", "gpt2-124M"], choices=list(CONFIGS))
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--optimizers", nargs="+", default=list(REGISTRY), choices=list(REGISTRY))
    p.add_argument("--implementations", nargs="+", default=["for-loop", "foreach", "fused", "compiled"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5, help="steps per variant per round")
    p.add_argument("--no-memory", action="store_true", help="skip the CPU per-variant memory subprocesses")
    p.add_argument("--out", default="benchmarks/results/optimizer_step")
    args = p.parse_args()
    device = torch.device(args.device)
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
           "argv": sys.argv[1:]}
    rows = []
    for set_name in args.sets:
        for dtype in args.dtypes:
            rows += run_set(args, set_name, dtype, device)
            print(markdown([r for r in rows if r["set"] == set_name and r["dtype"] == dtype], env), flush=True)
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "optimizer_step.json"), {"env": env, "rows": rows})
    with open(os.path.join(args.out, "optimizer_step.md"), "w") as f:
        f.write(markdown(rows, env) + "\n")
    plot(rows, os.path.join(args.out, "step_time_vs_params.png"))
    print(markdown(rows, env))


if __name__ == "__main__":
    main()
