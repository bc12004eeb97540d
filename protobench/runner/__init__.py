"""Training, resuming, checkpoints, evaluation runs and the result store."""
