"""The `macro_f1` metric module (evaluate.load(<this folder>) loads macro_f1.py)."""
