"""What each optimizer step costs per device, from the committed `optimizer_step.py` results, into
the table `finetune-opt list-optimizers` prints (finetune_opt/optim/step_costs.json, shipped in the
wheel): per entry and device, each timed implementation's median step and the fastest one's
multiple of fused AdamW's step on the same parameters. Rerun after committing new results:

    python benchmarks/step_costs.py          # rewrites finetune_opt/optim/step_costs.json
    python benchmarks/step_costs.py --check  # exit 1 if the shipped table is not what the results say

Parameters: BERT-base's fp32 where the entry was timed on them, else the first model and dtype of
its runs on which fused AdamW was timed too (the H200's torchao rows: Llama-1.1B bf16).
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TABLE = REPO / "finetune_opt" / "optim" / "step_costs.json"
MEASURED = {  # device type -> the committed runs that time its implementations, oldest first: a later
    # run's row replaces an earlier one's (tests/test_optim_defaults.py checks each entry's device
    # default is the fastest of them)
    "cpu": ["cpu_2core/optimizer_step_fast_steps*/optimizer_step.json",
            "cpu_2core/optimizer_step_adafactor/optimizer_step.json",  # Adafactor's one-graph step
            "cpu_2core/optimizer_step_adafactor_fused/optimizer_step.json",  # and its C++ kernel
            "cpu_2core/optimizer_step_muon/optimizer_step.json"],  # Muon, alone on the machine
    "cuda": ["NVIDIA_H200/optimizer_step*/optimizer_step.json"],
}
PREFERRED = ("bert-base-110M", "float32")
REFERENCE = ("adamw_fused", "fused")


def measured_paths(device: str) -> list[Path]:
    return [path for pattern in MEASURED[device] for path in sorted(RESULTS.glob(pattern))]


def measured_runs(device: str) -> list[tuple[Path, dict]]:
    return [(path, json.loads(path.read_text())) for path in measured_paths(device)]


def entry_cost(runs: list, name: str) -> dict | None:
    """The entry's timings on one set of parameters, and the fastest one's multiple of fused AdamW:
    the fused AdamW of the fastest one's own run where that run timed it (machine load moves both
    alike), else of the latest run that did."""
    rows = [(path, run["env"], r) for path, run in runs for r in run["rows"]
            if r["optimizer"] == name and "error" not in r]
    reference = {(path, r["set"], r["dtype"]): r["median_ms"] for path, run in runs for r in run["rows"]
                 if (r["optimizer"], r["implementation"]) == REFERENCE and "error" not in r}
    latest_reference = {(s, d): ms for (_, s, d), ms in reference.items()}
    keys = sorted({(r["set"], r["dtype"]) for _, _, r in rows if (r["set"], r["dtype"]) in latest_reference},
                  key=lambda k: k != PREFERRED)
    if not keys:
        return None
    chosen = [(path, env, r) for path, env, r in rows if (r["set"], r["dtype"]) == keys[0]]
    latest = {r["implementation"]: (path, env, r) for path, env, r in chosen}  # a later run's row replaces an earlier one's
    ms = {impl: round(r["median_ms"], 2) for impl, (_, _, r) in latest.items()}
    # the run the fastest implementation, and so the multiple, comes from
    fastest_path, env, fastest = min(latest.values(), key=lambda row: row[2]["median_ms"])
    reference_ms = reference.get((fastest_path, *keys[0]), latest_reference[keys[0]])
    return {"parameters": keys[0][0], "dtype": keys[0][1], "median_ms": ms,
            "x_fused_adamw": round(fastest["median_ms"] / reference_ms, 1),
            "machine": env["device"], "torch": env["torch"], "date": env["date"][:10],
            "sources": sorted({str(path.parent.relative_to(REPO)) for path, _, _ in chosen})}


def table(names: list[str]) -> dict:
    return {device: {name: cost for name in names if (cost := entry_cost(measured_runs(device), name))}
            for device in MEASURED}


def main():
    sys.path.insert(0, str(REPO))
    from finetune_opt.optim import REGISTRY

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the shipped table instead of writing it")
    text = json.dumps(table(list(REGISTRY)), indent=1, sort_keys=True) + "\n"
    if p.parse_args().check:
        sys.exit(0 if TABLE.read_text() == text else 1)
    TABLE.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
