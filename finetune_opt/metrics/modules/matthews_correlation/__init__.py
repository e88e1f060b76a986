"""The `matthews_correlation` metric module (evaluate.load(<this folder>) loads matthews_correlation.py)."""
