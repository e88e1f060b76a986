"""The GLUE job of finetune_glue.py, trained by transformers.Trainer.

The recipe is finetune_opt/recipes/trainer_glue.py, so that an installed package has it too
(`python -m finetune_opt.recipes.trainer_glue`); this file keeps the documented command.
"""

from finetune_opt.recipes.trainer_glue import main, run  # noqa: F401 (run: the entry point tests call in-process)

if __name__ == "__main__":
    main()
