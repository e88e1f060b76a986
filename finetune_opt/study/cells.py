"""Where a study keeps its cells: one run directory per cell, holding results.json when it finished
or failed.json when it stopped. The runner writes this layout and the report reads it."""

import json
from pathlib import Path

from finetune_opt.measure.results import load_results


def cell_dir(study, cell: dict) -> Path:
    return Path(study.output_dir) / "cells" / cell["id"]


def cell_done(study, cell: dict) -> bool:
    d = cell_dir(study, cell)
    return (d / "results.json").is_file() or (d / "failed.json").is_file()


def load_cell(study, cell: dict) -> dict:
    """Its results.json, or for a run that stopped its failed.json ({"failed": message})."""
    d = cell_dir(study, cell)
    if (d / "results.json").is_file():
        return load_results(str(d)).to_dict()  # schema checked
    with open(d / "failed.json") as f:
        return json.load(f)


