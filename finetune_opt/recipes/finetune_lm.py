"""Train a causal LM on WikiText-2 with a registered optimizer; report validation loss and
perplexity (before and after), step time, optimizer-step time, tokens/s and peak memory.

    accelerate launch recipes/finetune_lm.py --config wikitext2 data_dir=../shared/data/wikitext2
    python recipes/finetune_lm.py --config wikitext2 model=gpt2 model_config=null

Data: `data_dir=<dir with train.txt, valid.txt>`, else $FINETUNE_OPT_DATA/wikitext2, else the Hub
(Salesforce/wikitext, wikitext-2-v1). The text is tokenized with the model's tokenizer, joined, and cut
into blocks of `max_length` tokens (the run_clm recipe).
"""

import math

import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import default_data_collator

from finetune_opt.recipes.entry import recipe_main
from finetune_opt.data.loading import lm_blocks, load_task
from finetune_opt.train.engine import fit, make_accelerator
from finetune_opt.train.evaluation import evaluate_splits
from finetune_opt.models.loading import load_model, load_tokenizer, with_tokenizer_tokens
from finetune_opt.measure.results import save_results
from finetune_opt.tasks import check_recipe


def run(cfg):
    check_recipe(cfg.task, "finetune_lm.py")
    accelerator = make_accelerator(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    tokenizer.model_max_length = 10**9  # we cut blocks ourselves; silence the length warning
    data = lm_blocks(load_task(cfg.task, cfg.data, cfg.loop.seed), tokenizer, cfg.data.max_length,
                     accelerator.main_process_first)
    if cfg.data.train_eval_examples:  # training blocks scored like validation ones: the train-vs-dev gap
        n = min(cfg.data.train_eval_examples, len(data["train"]))
        data["train_eval"] = data["train"].shuffle(seed=cfg.loop.seed + 1).select(range(n))
    train_loader = DataLoader(data["train"], batch_size=cfg.loop.batch_size, shuffle=True,
                              collate_fn=default_data_collator)
    eval_loaders = {split: accelerator.prepare(DataLoader(data[split], batch_size=cfg.loop.eval_batch_size,
                                                          collate_fn=default_data_collator))
                    for split in ("eval", "train_eval") if split in data}

    model = load_model(cfg.model.name, head="causal-lm", model_config=with_tokenizer_tokens(cfg.model.config, tokenizer))

    def block_losses(model, batch):
        logits = model(input_ids=batch["input_ids"]).logits[:, :-1].float()
        return F.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], reduction="none").mean(1)

    def score(split, losses):
        # All blocks are the same length, so the mean of per-block losses is the token mean.
        prefix, loss = "" if split == "eval" else "train_", losses.mean().item()
        return {f"{prefix}eval_loss": loss, f"{prefix}perplexity": math.exp(loss), f"{prefix}eval_blocks": len(losses)}

    def evaluate(model):
        return evaluate_splits(model, eval_loaders, accelerator, lambda batch: block_losses(model, batch), score)

    save_results(cfg, accelerator, fit(cfg, accelerator, model, train_loader, evaluate))


def main(argv=None):
    recipe_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
