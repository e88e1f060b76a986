"""Fine-tune a sequence classifier on GLUE SST-2 or MRPC with a registered optimizer; report dev
accuracy (and F1 for MRPC), step time, optimizer-step time, throughput and peak memory.

    accelerate launch recipes/finetune_glue.py --config recipes/configs/sst2.yaml optimizer=adamw_fused
    python recipes/finetune_glue.py --config recipes/configs/mrpc.yaml data_dir=../shared/data/mrpc

Data: `data_dir=<dir with train.tsv, dev.tsv>`, else $FINETUNE_OPT_DATA/<task>, else the Hub (nyu-mll/glue).
"""

import torch
from torch.utils.data import DataLoader

from finetune_opt.config import recipe_main
from finetune_opt.engine import fit, make_accelerator
from finetune_opt.glue import check_glue_task, glue_collator, glue_metrics, load_glue
from finetune_opt.models import load_model, load_tokenizer
from finetune_opt.results import save_results


def run(cfg):
    check_glue_task(cfg.task)
    accelerator = make_accelerator(cfg)

    # Data: tokenized once (main process first, the others read its cache), padded per batch.
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    data = load_glue(cfg, tokenizer, accelerator.main_process_first)
    collate = glue_collator(tokenizer, cfg)
    train_loader = DataLoader(data["train"], batch_size=cfg.batch_size, shuffle=True, collate_fn=collate)
    eval_loaders = {split: accelerator.prepare(DataLoader(data[split], batch_size=cfg.eval_batch_size, collate_fn=collate))
                    for split in ("eval", "train_eval") if split in data}

    model = load_model(cfg.model, task="classification", model_config=cfg.model_config, num_labels=2)

    def evaluate(model):
        model.eval()
        metrics = {}
        with torch.no_grad():
            for split, loader in eval_loaders.items():
                logits, labels = [], []
                for batch in loader:
                    # gather_for_metrics drops the samples padded onto the last batch across ranks.
                    out, ref = accelerator.gather_for_metrics((model(**batch).logits, batch["labels"]))
                    logits.append(out.cpu())
                    labels.append(ref.cpu())
                prefix = "" if split == "eval" else "train_"
                metrics.update(glue_metrics(cfg.task, torch.cat(logits), torch.cat(labels), prefix))
        model.train()
        return metrics

    save_results(cfg, accelerator, fit(cfg, accelerator, model, train_loader, evaluate))


if __name__ == "__main__":
    recipe_main(run, __doc__.splitlines()[0])
