"""The pieces of instruction SFT that recipes/finetune_sft.py assembles: data, model, loaders and
the evaluation callback."""

from dataclasses import dataclass

import datasets
from torch.utils.data import DataLoader

from finetune_opt.errors import one_of
from finetune_opt.train.evaluation import eval_mode
from finetune_opt.data.instructions import (INSTRUCT_TASKS, Columns, PromptFormat, load_instruct, make_prompt_format,
                                        prompt_text, tokenize_instruct)
from finetune_opt.models.loading import load_model, load_tokenizer, with_tokenizer_tokens
from finetune_opt.data.packing import check_packing, pad_collator, padding_share, train_collator
from finetune_opt.models.peft import apply_peft, parameter_counts, register_adapter_checkpoints
from finetune_opt.train.sft_eval import GENERATION_METRICS, generation_accuracy, heldout_loss

PACKING_CHECK_EXAMPLES = 4


@dataclass
class SFTData:
    fmt: PromptFormat
    columns: Columns
    raw: datasets.DatasetDict        # rows as loaded (references for the generation metric)
    tokenized: datasets.DatasetDict  # input_ids, labels
    report: dict                     # per split: kept / truncated / dropped counts


def check_sft_task(task: str):
    if task not in INSTRUCT_TASKS:
        raise one_of("task for this recipe", task, list(INSTRUCT_TASKS))


def prepare_data(cfg, accelerator):
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name)
    tokenizer.model_max_length = 10**9  # we truncate ourselves; silence the length warning
    fmt, columns = make_prompt_format(tokenizer, cfg.task, cfg.sft), Columns.from_config(cfg.task, cfg.sft)
    raw = load_instruct(cfg.task, cfg.data, columns, cfg.loop.seed)
    tokenized, report = tokenize_instruct(raw, fmt, columns, cfg.data.max_length, accelerator.main_process_first)
    lengths = [len(ids) for ids in tokenized["train"]["input_ids"]]
    report["train_padding_share"] = {"padded": padding_share(lengths, cfg.loop.batch_size, False, cfg.loop.seed),
                                     "packed": padding_share(lengths, cfg.loop.batch_size, True, cfg.loop.seed)}
    return tokenizer, SFTData(fmt, columns, raw, tokenized, report)


def build_model(cfg, tokenizer, data: SFTData, accelerator):
    """The causal LM (pretrained or from model_config), checked for packing, wrapped with PEFT."""
    model = load_model(cfg.model.name, head="causal-lm", model_config=with_tokenizer_tokens(cfg.model.config, tokenizer))
    # Training needs no KV cache, and with one transformers does not separate packed examples.
    model.config.use_cache = False
    if cfg.sft.packing:
        check_packing(model, list(data.tokenized["train"].select(range(PACKING_CHECK_EXAMPLES))), tokenizer.pad_token_id)
    if cfg.sft.peft:
        model = apply_peft(model, cfg.sft.peft)
        register_adapter_checkpoints(accelerator)
    return model, parameter_counts(model)


def train_loader(cfg, data: SFTData, tokenizer, model):
    return DataLoader(data.tokenized["train"], batch_size=cfg.loop.batch_size, shuffle=True,
                      collate_fn=train_collator(cfg.sft.packing, tokenizer.pad_token_id, model))


def _generation_prompts(cfg, data: SFTData) -> list[dict]:
    rows = data.raw["eval"].select(range(min(cfg.sft.generation_examples, len(data.raw["eval"]))))
    prompts = [{"input_ids": data.fmt.prompt_ids(prompt_text(row, data.columns)), "index": i}
               for i, row in enumerate(rows)]
    return [p for p in prompts if len(p["input_ids"]) < cfg.data.max_length]  # as in training


def make_evaluate(cfg, accelerator, data: SFTData, tokenizer):
    """evaluate(model) -> held-out loss / perplexity, plus generation accuracy where the task has a metric."""
    pad = tokenizer.pad_token_id
    eval_loader = accelerator.prepare(DataLoader(data.tokenized["eval"], batch_size=cfg.loop.eval_batch_size,
                                                 collate_fn=pad_collator(pad)))
    metric = INSTRUCT_TASKS[cfg.task].metric
    gen_loader = references = None
    if cfg.sft.generation_examples and metric:
        gen_loader = accelerator.prepare(DataLoader(_generation_prompts(cfg, data), batch_size=cfg.loop.eval_batch_size,
                                                    collate_fn=pad_collator(pad, padding_side="left")))
        references = [str(r) for r in data.raw["eval"][data.columns.response][:cfg.sft.generation_examples]]

    def evaluate(model):
        with eval_mode(model):
            metrics = heldout_loss(model, eval_loader, accelerator)
            if gen_loader is not None:
                metrics.update(generation_accuracy(model, gen_loader, accelerator, tokenizer, references,
                                                   GENERATION_METRICS[metric], cfg.sft.max_new_tokens, data.fmt.end_id))
        return metrics

    return evaluate
