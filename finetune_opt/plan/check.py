"""Verification of `finetune-opt plan` against measurement: one configuration trained for a few
steps through the engine (in this process, or per rank under `accelerate launch -m
finetune_opt.plan.check`), its measured memory breakdown set beside the plan's row for the same
configuration. Used by tests/test_plan.py and benchmarks/plan_verify.py.

The batches all have the plan's shape (batch_size x max_length), so the probed step is the
longest one: the measurement is of the step the plan predicts.
"""

import argparse
import json
import os
import sys

import torch

from finetune_opt.measure.memory import PLANNED

# Tolerances of the issue: every component within 10% of the measurement, activations within 25%.
TOLERANCE = {c: 0.10 for c in PLANNED} | {"activations_and_workspace": 0.25}
TINY_LLAMA = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256}
TASK = "gsm8k"  # the SFT recipe's task: causal LM, and LoRA allowed


def case(name: str, optimizer="adamw", tuning="full", precision="fp32", distribution="single", in_backward="off",
         checkpointing="off", batch_size=4, max_length=64, model_config=None, data_length=None) -> dict:
    """One configuration, in the plan's axis names; `data_length`: the batches' length (default
    max_length, so the probed batch is the longest the plan predicts)."""
    return {"name": name, "optimizer": optimizer, "tuning": tuning, "precision": precision,
            "distribution": distribution, "in_backward": in_backward, "checkpointing": checkpointing,
            "batch_size": batch_size, "max_length": max_length, "model_config": model_config or TINY_LLAMA,
            "data_length": data_length or max_length}


def processes(c: dict) -> int:
    return 1 if c["distribution"] == "single" else 2


def plan_row(c: dict, lora_r: int = 4) -> dict:
    """The plan's row for this configuration (the same code `finetune-opt plan` runs)."""
    from finetune_opt.plan import planner as plan
    setup = plan.Setup(task=TASK, max_length=c["max_length"], batch_size=c["batch_size"], processes=processes(c),
                       memory=float(2**40), memory_source="-", bandwidth_GBps=1.0, bandwidth_source="-", lora_r=lora_r,
                       model_config=c["model_config"], only={k: {c[k]} for k in plan.AXES})
    rows = plan.plan(setup)
    assert len(rows) == 1, rows
    return rows[0]


def run_config(c: dict, output_dir: str, lora_r: int = 4):
    from finetune_opt.config.run_config import RunConfig
    return RunConfig(task=TASK, model_config=c["model_config"], optimizer=c["optimizer"], max_steps=3,
                     timing_warmup_steps=2, log_every=1, batch_size=c["batch_size"], max_length=c["max_length"],
                     mixed_precision="bf16" if c["precision"] == "bf16" else "no", warmup_ratio=0,
                     optimizer_in_backward=c["in_backward"] == "on", gradient_checkpointing=c["checkpointing"] == "on",
                     max_grad_norm=None, log_with=None, eval_before_training=False, output_dir=output_dir,
                     peft={"method": "lora", "r": lora_r, "alpha": 2 * lora_r} if c["tuning"] == "lora" else None)


def measure(c: dict, output_dir: str, lora_r: int = 4) -> dict:
    """Train 3 steps (the second probed, the engine's last warm-up step; DDP: the third, after its
    one-off bucket rebuild) on random tokens of the plan's shape; the run's breakdown."""
    from finetune_opt.train.engine import fit, make_accelerator
    from finetune_opt.models.loading import load_model
    from finetune_opt.models.peft import apply_peft
    cfg = run_config(c, output_dir, lora_r)
    accelerator = make_accelerator(cfg)
    torch.manual_seed(0)
    model = load_model(None, head="causal-lm", model_config=c["model_config"])
    if cfg.sft.peft:
        model = apply_peft(model, cfg.sft.peft)
    g = torch.Generator().manual_seed(0)
    vocab = c["model_config"]["vocab_size"]
    rows = [torch.randint(0, vocab, (c.get("data_length") or c["max_length"],), generator=g)
            for _ in range(8 * c["batch_size"])]
    data = [{"input_ids": r, "labels": r} for r in rows]
    loader = torch.utils.data.DataLoader(data, batch_size=c["batch_size"])
    result = fit(cfg, accelerator, model, loader, lambda m: {})
    return {"breakdown": result.memory["breakdown"], "distribution": result.distribution}


def activation_peak(measured: dict) -> int | None:
    """The measured activations the prediction describes: the larger of the forward pass's peak and
    backward's peak less the gradients then alive (with checkpointing the peak is in backward,
    where one layer at a time is recomputed)."""
    forward, backward = measured.get("activations_and_workspace"), measured.get("backward_peak_above_forward_start")
    if backward is None:
        return forward
    return max(forward or 0, backward - (measured.get("gradients") or 0))


def compare(measured: dict, predicted: dict) -> dict:
    """Per component: predicted, measured, their ratio, and whether it is within its tolerance (a
    zero prediction must be measured as zero, to 64 KiB: a fused step's or an in-backward run's)."""
    measured = {**measured, "activations_and_workspace": activation_peak(measured)}
    out = {}
    for k in PLANNED:
        p, m = predicted.get(k), measured.get(k)
        if p is None or m is None:
            out[k] = {"predicted": p, "measured": m, "ratio": None, "ok": None}
            continue
        ok = abs(m - p) <= 64 * 1024 if p == 0 else abs(m - p) <= TOLERANCE[k] * m
        out[k] = {"predicted": p, "measured": m, "ratio": m / p if p else None, "ok": ok}
    return out


def verify(c: dict, output_dir: str) -> dict:
    """Measure `c` (in this process, or launched on 2 ranks) and compare with the plan's row."""
    result = measure(c, output_dir) if processes(c) == 1 else launch(c, output_dir)
    b = result["breakdown"]
    row = plan_row(c)
    return {"case": c["name"], "config": {k: c[k] for k in ("optimizer", "tuning", "precision", "distribution",
                                                              "in_backward", "checkpointing")},
            "batch_shape": b["batch_shape"], "distribution": result["distribution"],
            "plan_equals_run_prediction": all(row[k] == b["predicted"][k] for k in PLANNED),
            "components": compare(b["measured"], row),
            "predicted_total": row["total"],
            "measured_step_peak": b["measured"]["parameters"] + b["measured"]["optimizer_state"]
                                  + (b["measured"]["step_peak_above_start"] or 0)
                                  + (b["measured"].get("ddp_gradient_buckets") or 0)}


def launch(c: dict, output_dir: str) -> dict:
    """Two ranks through `accelerate launch`, as users launch them (FSDP2: accelerate_configs/fsdp2.yaml)."""
    import socket
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # <repo>/finetune_opt/plan/check.py
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.makedirs(output_dir, exist_ok=True)
    out = os.path.join(output_dir, "plan_check.json")
    worker = ["-m", "finetune_opt.plan.check", "--case", json.dumps(c), "--out", out]
    if c["distribution"] == "fsdp2":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               os.path.join(repo, "accelerate_configs", "fsdp2.yaml"), "--num_processes", "2", "--mixed_precision",
               "bf16" if c["precision"] == "bf16" else "no", "--main_process_port", str(port), *worker]
    else:  # CPU DDP: torchrun (`accelerate launch --cpu --num_processes 2` starts one process)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               *worker]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"{c['name']} failed:\n{p.stderr[-3000:]}")
    with open(out) as f:
        return json.load(f)


def main(argv=None):
    """A rank of a launched case: measure, and rank 0 writes the breakdown (it is rank 0's)."""
    p = argparse.ArgumentParser()
    p.add_argument("--case", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    result = measure(json.loads(args.case), os.path.join(os.path.dirname(args.out), "run"))
    if int(os.environ.get("RANK", "0")) == 0:
        with open(args.out, "w") as f:
            json.dump(result, f, default=str)


if __name__ == "__main__":
    main()
