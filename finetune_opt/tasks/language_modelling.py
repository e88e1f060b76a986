"""Causal language modelling on raw text; perplexity is computed by the LM recipe itself."""

from finetune_opt.tasks.base import CAUSAL_LM, LocalFiles, Task

TASKS = (
    Task(name="wikitext2", problem_type=CAUSAL_LM, text_columns=("text",), headline="perplexity",
         higher_is_better=False, hub=("Salesforce/wikitext", "wikitext-2-v1"),
         local=LocalFiles(files={"train": ("train.txt", "wiki.train.tokens"), "eval": ("valid.txt", "wiki.valid.tokens")},
                          columns={"text": "text"})),
)
