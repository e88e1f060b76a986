"""The `spearmanr` metric module (evaluate.load(<this folder>) loads spearmanr.py)."""
