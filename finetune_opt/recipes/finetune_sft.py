"""Supervised fine-tuning (SFT) of a causal LM on instruction data with a registered optimizer,
full or LoRA (peft); report held-out loss / perplexity on the responses, GSM8K accuracy by greedy
generation, trainable parameters, optimizer-state bytes, step time, tokens/s and padding share.

    accelerate launch recipes/finetune_sft.py --config gsm8k_sft
    accelerate launch recipes/finetune_sft.py --config gsm8k_lora optimizer=adamw_fused
    python recipes/finetune_sft.py --config gsm8k_sft_tiny data_dir=../shared/data/gsm8k

Data: `data_dir=<dir or file>` (JSONL / JSON / CSV), else $FINETUNE_OPT_DATA/<task>, else the Hub
(`dataset=<name>`, or openai/gsm8k for task gsm8k). The loss is on the response tokens only.
"""

from finetune_opt.recipes.entry import recipe_main
from finetune_opt.train.engine import fit, make_accelerator
from finetune_opt.measure.results import save_results
from finetune_opt.train.sft import build_model, check_sft_task, make_evaluate, prepare_data, train_loader


def run(cfg):
    check_sft_task(cfg.task)
    accelerator = make_accelerator(cfg)
    tokenizer, data = prepare_data(cfg, accelerator)
    model, parameters = build_model(cfg, tokenizer, data, accelerator)
    evaluate = make_evaluate(cfg, accelerator, data, tokenizer)
    results = fit(cfg, accelerator, model, train_loader(cfg, data, tokenizer, model), evaluate)
    results.parameters, results.data = parameters, data.report
    save_results(cfg, accelerator, results)


def main(argv=None):
    recipe_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
