"""The recipes' shared entry point: `--config FILE key=value ...` -> a validated config, a claimed
output directory, the run; a ConfigError is one line and exit code 2."""

import argparse
import os
import sys

from finetune_opt.config.loading import load_config
from finetune_opt.errors import ConfigError, Interrupted, TrainingStopped
from finetune_opt.train.run_dir import claim_output_dir, release_output_dir


def recipe_main(run, description: str, argv=None):
    """Entry point shared by the recipes: parse `--config FILE key=value ...`, run, and turn
    ConfigError into a one-line message with exit code 2."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file with RunConfig fields, or a packaged config's name "
                                         "(`finetune-opt configs` lists them)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. optimizer=adamw_fused lr=3e-5")
    args = parser.parse_args(argv)

    rank = int(os.environ.get("RANK", "0"))  # set by torchrun / accelerate launch; no Accelerator yet
    cfg = None
    try:
        cfg = load_config(args.config, args.overrides)
        claim_output_dir(cfg, is_main_process=rank == 0)
        run(cfg)
    except ConfigError as e:
        if cfg is not None:
            release_output_dir(cfg.output.output_dir)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        if rank == 0:
            print(e, file=sys.stderr)
        sys.exit(e.exit_code)
