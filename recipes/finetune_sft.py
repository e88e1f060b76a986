"""Supervised fine-tuning (SFT) of a causal LM on instruction data, full or LoRA.

The recipe is finetune_opt/recipes/finetune_sft.py, so that an installed package has it too
(`python -m finetune_opt.recipes.finetune_sft`); this file keeps the documented command.
"""

from finetune_opt.recipes.finetune_sft import main, run  # noqa: F401 (run: the entry point tests call in-process)

if __name__ == "__main__":
    main()
