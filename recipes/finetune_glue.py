"""Fine-tune a sequence classifier on GLUE SST-2 or MRPC with a registered optimizer; report dev
accuracy (and F1 for MRPC), step time, optimizer-step time, throughput and peak memory.

    accelerate launch recipes/finetune_glue.py --config recipes/configs/sst2.yaml optimizer=adamw_fused
    python recipes/finetune_glue.py --config recipes/configs/mrpc.yaml data_dir=../shared/data/mrpc

Data: `data_dir=<dir with train.tsv, dev.tsv>`, else $FINETUNE_OPT_DATA/<task>, else the Hub (nyu-mll/glue).
"""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from finetune_opt.config import recipe_main
from finetune_opt.data import TASKS, load_task
from finetune_opt.engine import fit, make_accelerator
from finetune_opt.errors import one_of
from finetune_opt.metrics import load_metric
from finetune_opt.models import load_model, load_tokenizer
from finetune_opt.results import save_results

GLUE_TASKS = ("sst2", "mrpc")


def run(cfg):
    if cfg.task not in GLUE_TASKS:
        raise one_of("task for this recipe", cfg.task, GLUE_TASKS)
    spec = TASKS[cfg.task]
    metrics = [load_metric(name) for name in spec.metrics]
    accelerator = make_accelerator(cfg)

    # Data: tokenize once (main process first, the others read its cache), pad per batch.
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    data = load_task(cfg.task, cfg.data_dir, cfg.train_examples, cfg.eval_examples, seed=cfg.seed)

    def tokenize(batch):
        return tokenizer(*[batch[c] for c in spec.text_columns], truncation=True, max_length=cfg.max_length)

    with accelerator.main_process_first():
        data = data.map(tokenize, batched=True, remove_columns=list(spec.text_columns))
    data = data.rename_column("label", "labels")
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if cfg.mixed_precision != "no" else None)
    train_loader = DataLoader(data["train"], batch_size=cfg.batch_size, shuffle=True, collate_fn=collate)
    eval_loader = accelerator.prepare(DataLoader(data["eval"], batch_size=cfg.eval_batch_size, collate_fn=collate))

    model = load_model(cfg.model, task="classification", model_config=cfg.model_config, num_labels=2)

    def evaluate(model):
        model.eval()
        predictions, references, losses = [], [], []
        with torch.no_grad():
            for batch in eval_loader:
                logits = model(**batch).logits.float()
                loss = F.cross_entropy(logits, batch["labels"], reduction="none")
                # gather_for_metrics drops the samples padded onto the last batch across ranks.
                pred, ref, loss = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"], loss))
                predictions.append(pred.cpu())
                references.append(ref.cpu())
                losses.append(loss.cpu())
        model.train()
        predictions, references = torch.cat(predictions), torch.cat(references)
        result = {"eval_loss": torch.cat(losses).mean().item()}
        for metric in metrics:
            result.update(metric.compute(predictions=predictions, references=references))
        result["eval_examples"] = len(references)
        return result

    measured = fit(cfg, accelerator, model, train_loader, evaluate)
    if measured is not None:  # None: stopped by SIGTERM after saving a checkpoint
        save_results(cfg, accelerator, measured)


if __name__ == "__main__":
    recipe_main(run, __doc__.splitlines()[0])
