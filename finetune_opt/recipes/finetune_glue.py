"""Fine-tune a sequence classifier (or regressor) on a GLUE task or any labelled text dataset with a
registered optimizer; report the task's official dev metrics, step time, optimizer-step time,
throughput and peak memory.

    accelerate launch recipes/finetune_glue.py --config sst2 optimizer=adamw_fused
    python recipes/finetune_glue.py --config stsb data_dir=../shared/data/stsb
    python recipes/finetune_glue.py --config sst2 task=text_classification data_dir=null \\
        data_files='{train: my_train.csv, eval: my_dev.csv}' text_columns=[text] label_column=label

Tasks: every entry of finetune_opt.tasks.TASKS this recipe runs (the nine GLUE tasks, text_classification,
text_regression). GLUE data: `data_dir=<dir with the GLUE TSVs>`, else $FINETUNE_OPT_DATA/<task>, else the
Hub (nyu-mll/glue).
"""

from torch.utils.data import DataLoader

from finetune_opt.data.batching import grouped_or_shuffled_loader
from finetune_opt.train.classification import (classification_model, collator, eval_splits, load_classification,
                                         metric_prefix, task_metrics)
from finetune_opt.recipes.entry import recipe_main
from finetune_opt.train.engine import fit, make_accelerator
from finetune_opt.train.evaluation import evaluate_splits
from finetune_opt.models.loading import load_tokenizer
from finetune_opt.measure.results import save_results
from finetune_opt.tasks import check_recipe


def run(cfg):
    task = check_recipe(cfg.task, "finetune_glue.py")
    accelerator = make_accelerator(cfg)

    # Data: tokenized once (main process first, the others read its cache), padded per batch, and
    # (group_by_length) batched by similar length, so that the padding is small.
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    data = load_classification(cfg.task, cfg.data, cfg.loop.seed, tokenizer, accelerator.main_process_first)
    collate = collator(tokenizer, cfg.precision)
    train_loader = grouped_or_shuffled_loader(data.splits["train"], cfg.loop, cfg.precision.group_by_length, collate,
                                              accelerator.num_processes)
    eval_loaders = {split: accelerator.prepare(DataLoader(data.splits[split], batch_size=cfg.loop.eval_batch_size,
                                                          collate_fn=collate))
                    for split in eval_splits(data)}

    model = classification_model(cfg.model, data, cfg.precision.last_layer_cls_only)

    def evaluate(model):
        return evaluate_splits(model, eval_loaders, accelerator, lambda batch: (model(**batch).logits, batch["labels"]),
                               lambda split, logits, labels: task_metrics(task, logits, labels, metric_prefix(split),
                                                                          cfg.data.metric))

    save_results(cfg, accelerator, fit(cfg, accelerator, model, train_loader, evaluate))


def main(argv=None):
    recipe_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
