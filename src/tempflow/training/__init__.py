"""Training: the trainer (phases), its sampling phase, EMA, run directory, process collectives."""
