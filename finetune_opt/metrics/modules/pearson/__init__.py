"""The `pearson` metric module (evaluate.load(<this folder>) loads pearson.py)."""
