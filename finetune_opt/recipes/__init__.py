"""The recipes, one module each: `run(cfg)` does the job, `main()` parses `--config FILE key=value ...`.

    python -m finetune_opt.recipes.finetune_glue --config sst2.yaml     (installed package)
    python recipes/finetune_glue.py --config sst2  (source checkout: a thin wrapper)

Each task names its recipe by file name (finetune_opt.tasks.RECIPES); `module` turns it into this
package's module, which `finetune-opt study` runs.
"""


def module(script: str) -> str:
    """"finetune_glue.py" -> "finetune_opt.recipes.finetune_glue"."""
    return f"{__name__}.{script.removesuffix('.py')}"
