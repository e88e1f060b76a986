"""Measurement: step timing, memory by phase, the results file."""
