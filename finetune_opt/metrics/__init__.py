"""Local `evaluate` metric modules: `evaluate.load("accuracy")` needs the Hub, a directory does not."""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str) -> evaluate.EvaluationModule:
    # keep_in_memory: no Arrow cache files, so every rank can compute without sharing a lock.
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)
