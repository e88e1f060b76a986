"""Train a causal LM on WikiText-2 with a registered optimizer.

The recipe is finetune_opt/recipes/finetune_lm.py, so that an installed package has it too
(`python -m finetune_opt.recipes.finetune_lm`); this file keeps the documented command.
"""

from finetune_opt.recipes.finetune_lm import main, run  # noqa: F401 (run: the entry point tests call in-process)

if __name__ == "__main__":
    main()
