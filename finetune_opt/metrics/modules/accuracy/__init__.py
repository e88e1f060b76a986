"""The `accuracy` metric module (evaluate.load(<this folder>) loads accuracy.py)."""
