"""Training: losses, optimizers, meta-gradient estimators, the train step, evaluation,
the run's config, directory, log, lock and checkpoints, and the trainer (`train.py`)."""
