"""The recipes, one module each: `run(cfg)` does the job, `main()` parses `--config FILE|NAME key=value ...`.

    python -m finetune_opt.recipes.finetune_glue --config sst2     (installed package; a packaged config by name)
    python recipes/finetune_glue.py --config my_sst2.yaml          (source checkout: a thin wrapper; a file)

Each task names its recipe by file name (finetune_opt.tasks.RECIPES); `finetune_opt.tasks.recipe_module`
turns it into this package's module, which `finetune-opt study` runs.
"""
