"""Training: the engine, checkpoints and the run directory, tracking, evaluation, the task runners."""
