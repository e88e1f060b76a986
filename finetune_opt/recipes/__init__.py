"""The recipes, one module each: `run(cfg)` does the job, `main()` parses `--config FILE|NAME key=value ...`.

    python -m finetune_opt.recipes.finetune_glue --config sst2     (installed package; a packaged config by name)
    python recipes/finetune_glue.py --config my_sst2.yaml          (source checkout: a thin wrapper; a file)

Each task names its recipe by file name (finetune_opt.tasks.RECIPES); `module` turns it into this
package's module, which `finetune-opt study` runs.
"""


def module(script: str) -> str:
    """"finetune_glue.py" -> "finetune_opt.recipes.finetune_glue"."""
    return f"{__name__}.{script.removesuffix('.py')}"
