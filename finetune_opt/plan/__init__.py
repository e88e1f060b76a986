"""The memory planner: will a run fit, per rank, before it starts."""
