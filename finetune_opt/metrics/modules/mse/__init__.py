"""The `mse` metric module (evaluate.load(<this folder>) loads mse.py)."""
