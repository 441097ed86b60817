"""Trains and evaluates one config; rerunning the same command resumes from --workdir.

    python -m experiments.train --config=experiments/configs/rule110.py \
        --workdir=runs/rule110_n4 --config.passes=4

Each config file's docstring is its run-book. Outputs under --workdir: config.json,
metrics.jsonl, summary.json, checkpoints/, TensorBoard event files
(`tensorboard --logdir runs/`). `--help --config=<file>` lists every flag and the file's
config fields with their defaults. A usage error (an unknown flag or field, a value that
does not parse or validate, multi-host flags without a coordinator) exits 2 with one line
on stderr, before anything is written; a workdir holding a run of a different config
(rerun with --allow_config_change to continue it under the new values anyway), a NaN/Inf
loss or gradient norm, or a full disk / unwritable workdir exits 1;
128 + the signal number on SIGTERM or SIGINT (summary.json records the stop).

Several devices: --config.data_parallel=True (or a device count). Several hosts: the same
command on every host with --coordinator_address=HOST0:PORT --num_processes=P
--process_id=i (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID; or
--distributed on a cluster JAX detects: Cloud TPU, SLURM, Open MPI). See the README,
"Launching on several GPUs or TPU hosts".
"""

from __future__ import annotations

import logging as logging_lib
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import usage
from experiments.sweeping import lock
from sleep_consolidation.training import run_config, run_dir, sharding, train, train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run's outputs.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Continue the run in --workdir although a field that changes what it computes differs "
    "from its config.json (passes, seed, window, batch_size, ...); the change is recorded "
    "in config.json's config_changes. Steps and the log/eval/checkpoint cadence may change "
    "without it.",
)
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", None, "Persistent XLA compilation cache (optional)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: host:port of process 0 (all processes)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host with the cluster auto-detected by JAX (TPU, SLURM)."
)
_DIST_TIMEOUT = flags.DEFINE_float(
    "distributed_timeout_s",
    sharding.DEFAULT_INIT_TIMEOUT_S,
    "Multi-host: seconds every process waits for the others (a worker first waits this long "
    "for the coordinator, then fails with a message naming it).",
)
flags.mark_flags_as_required(["config", "workdir"])


def _check_multihost_flags() -> None:
    """A multi-host run needs the coordinator's address on every process; without it JAX
    fails deep inside `jax.distributed.initialize`."""
    env = os.environ
    asked = {
        "--num_processes": _NUM_PROCESSES.value is not None or env.get(sharding.ENV_NUM_PROCESSES),
        "--process_id": _PROCESS_ID.value is not None or env.get(sharding.ENV_PROCESS_ID),
    }
    given = [f for f, v in asked.items() if v]
    coordinator = _COORDINATOR.value or env.get(sharding.ENV_COORDINATOR)
    if given and not (coordinator or _DISTRIBUTED.value):
        usage.fail(
            f"{' and '.join(given)} without a coordinator: add --coordinator_address=HOST0:PORT "
            f"(the same on every host; or ${sharding.ENV_COORDINATOR}), or use --distributed "
            "on a cluster JAX detects (Cloud TPU, SLURM, Open MPI)",
            "experiments.train",
        )


class _QuietOrbax(logging_lib.Filter):
    """Drops Orbax's per-save INFO lines (kept: its warnings and errors)."""

    def filter(self, record):
        return record.levelno >= logging_lib.WARNING or "/orbax/" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietOrbax())
    _check_multihost_flags()
    # Before anything else touches JAX (a no-op unless asked by flags or env vars).
    sharding.maybe_initialize_distributed(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value,
        timeout_s=_DIST_TIMEOUT.value,
    )  # fmt: skip
    if _CACHE.value:
        jax.config.update("jax_compilation_cache_dir", _CACHE.value)
    logging.info(
        "JAX process %d of %d; devices: %s", jax.process_index(), jax.process_count(),
        jax.devices(),
    )  # fmt: skip
    try:
        run_config.resolve_config(_CONFIG.value)  # an invalid config is refused before any write
        # SIGTERM (Slurm's preemption and time-out) stops the run like Ctrl-C: summary.json
        # records it, the lock (<workdir>/train.lock, held by train_and_evaluate: a second
        # launch on a live run, e.g. a sweep worker's orphan, is refused) is released, the
        # last checkpoint kept.
        with run_dir.stop_signals_raise():
            train.train_and_evaluate(
                _CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value
            )
    except run_dir.StopSignal as e:
        logging.error("%s: %s", _WORKDIR.value, e)
        print(f"error: {_WORKDIR.value}: {e}; rerun the same command to resume", file=sys.stderr)
        sys.exit(128 + e.signum)  # the shell's convention for a death by that signal
    # Config errors and conflicts (ValueError), NaN/Inf, I/O errors (full disk, unwritable
    # workdir: the message names the path), and a run directory another process trains.
    except (ValueError, train_step.NonFiniteError, OSError, lock.LockedError) as e:
        print(f"error: {e}", file=sys.stderr)  # once: absl's log also goes to stderr
        # A config the flags asked for that does not validate is a usage error.
        sys.exit(usage.USAGE_ERROR if str(e).startswith("invalid config") else 1)


if __name__ == "__main__":
    app.run(main, flags_parser=usage.parser("experiments.train", __doc__, ["experiments.train"],
                                            config_flag="config"))  # fmt: skip
