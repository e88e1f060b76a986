"""The packaged `evaluate` metric modules: one folder each, <name>/<name>.py (the layout evaluate.load reads)."""
