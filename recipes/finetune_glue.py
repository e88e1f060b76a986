"""Fine-tune a sequence classifier (or regressor) on a GLUE task or any labelled text dataset.

The recipe is finetune_opt/recipes/finetune_glue.py, so that an installed package has it too
(`python -m finetune_opt.recipes.finetune_glue`); this file keeps the documented command.
"""

from finetune_opt.recipes.finetune_glue import main, run  # noqa: F401 (run: the entry point tests call in-process)

if __name__ == "__main__":
    main()
