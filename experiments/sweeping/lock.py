"""The sweep's and the run's pid locks, which live in the library (`run_lock.py`) so that
`train.train_and_evaluate` holds a run's lock however it is called."""

from sleep_consolidation.training.run_lock import (  # noqa: F401 - re-exported
    LOCK_FILE,
    TRAIN_LOCK_FILE,
    DirLock,
    LockedError,
    hold_run,
    pid_alive,
)
