"""Metrics: evaluate modules, packaged (offline) or named by the config."""
