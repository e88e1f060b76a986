"""The `f1` metric module (evaluate.load(<this folder>) loads f1.py)."""
