"""Instruction SFT of causal LMs (recipes/finetune_sft.py). How the data is read (columns, prompt
templates, generation metric) is finetune_opt.data.instructions's; these entries give the rest of the
toolkit (config, study, compare) the task's name, recipe and headline metric."""

from finetune_opt.tasks.base import INSTRUCTION_SFT, LocalFiles, Task

TASKS = (
    Task(name="gsm8k", problem_type=INSTRUCTION_SFT, text_columns=("question",), headline="perplexity",
         higher_is_better=False, hub=("openai/gsm8k", "main"),
         local=LocalFiles(files={"train": ("train.jsonl",), "eval": ("test.jsonl",)},
                          columns={"question": "question", "answer": "answer"})),
    # columns from the config (prompt_column, response_column); data from data_dir or dataset=
    Task(name="instruct", problem_type=INSTRUCTION_SFT, text_columns=(), headline="perplexity",
         higher_is_better=False, local=LocalFiles(files={}, columns={})),
)
