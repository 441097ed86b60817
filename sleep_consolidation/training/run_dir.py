"""A run's directory: its file names, its record (`config.json`), the check that a rerun
continues the same run, stop signals and write failures. Its JSON files are written and
read by `json_io.py`, so that a kill mid-write leaves a file the next run can read.

Layout (checkpoints: see `checkpointing.py`):

    workdir/config.json     `run_record`: the requested config and what it resolved to
    workdir/metrics.jsonl   one JSON object per logged step (appended, whole lines)
    workdir/theta.jsonl     rule="parametric": the rule's coefficients at eval steps
    workdir/summary.json    the run's status and last eval (rewritten atomically)
    workdir/events.out.tfevents.*  TensorBoard (train and eval curves)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import threading
from typing import Any

from absl import logging

from sleep_consolidation.training import checkpoint_files

# Also importable from here, where code (the tests) names them run_dir.read_jsonl & co.
from sleep_consolidation.training.json_io import read_jsonl, truncate_jsonl  # noqa: F401
from sleep_consolidation.training.run_config import (
    MODEL_FIELDS,
    RunSpec,
    config_to_dict,
    with_optional_task_knobs,
)

CONFIG_FILE = checkpoint_files.CONFIG_FILE
METRICS_FILE = "metrics.jsonl"
THETA_FILE = "theta.jsonl"  # rule="parametric": describe_theta per ssm layer at eval steps
SUMMARY_FILE = "summary.json"


class ConfigConflictError(ValueError):
    """The workdir holds a run whose config differs from the requested one in a field
    that changes what is computed (`check_workdir`)."""


class RunIOError(OSError):
    """Writing a run's outputs failed (a full disk, an unwritable workdir); the run stopped
    and its last good checkpoint is kept."""


class StopSignal(KeyboardInterrupt):
    """A stop signal (SIGTERM: Slurm's preemption and time-out; SIGINT) raised in the main
    thread, so that a run ends as on Ctrl-C: the last checkpoint kept (a save in flight
    finished), summary.json "interrupted" with `signal`, locks released."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")


# A stop signal that arrives inside `signals_deferred` is held here and raised as the
# outermost such block ends (signals are delivered to the main thread only).
_DEFERRED = {"depth": 0, "pending": None}


@contextlib.contextmanager
def signals_deferred():
    """Within the block a stop signal is held, and raised (`StopSignal`) at the next
    `raise_pending()` or as the block ends: for code that must not be cut half-way. A
    signal raised at an arbitrary point of the training loop (in CI: under load, with a
    checkpoint every 2 steps) once left a run hanging instead of stopping; inside Orbax's
    start of an asynchronous save or a log writer's lock is where that can happen."""
    _DEFERRED["depth"] += 1
    try:
        yield
    finally:
        _DEFERRED["depth"] -= 1
    if not _DEFERRED["depth"]:
        raise_pending()


def raise_pending() -> None:
    """Raises the stop signal that `signals_deferred` is holding, if one arrived: a loop
    calls it where stopping is clean (the training loop: between steps)."""
    if _DEFERRED["pending"] is not None:
        signum, _DEFERRED["pending"] = _DEFERRED["pending"], None
        raise StopSignal(signum)


@contextlib.contextmanager
def stop_signals_raise(signums=(signal.SIGTERM, signal.SIGINT)):
    """Within the block, the first of `signums` raises `StopSignal` (inside
    `signals_deferred`, as that block ends); a repeat is logged and ignored, so that the
    clean-up it started (the summary, the save in flight) is not cut short. Does nothing
    outside the main thread (Python delivers signals there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        del frame
        if fired:
            logging.warning("%s again while stopping: finishing the clean-up first",
                            signal.Signals(signum).name)  # fmt: skip
            return
        fired.append(signum)
        if _DEFERRED["depth"]:  # inside signals_deferred: raised as that block ends
            logging.warning("%s: stopping at the next clean point (between steps)",
                            signal.Signals(signum).name)  # fmt: skip
            _DEFERRED["pending"] = signum
            return
        raise StopSignal(signum)

    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def latest_checkpoint_on_disk(workdir: str) -> int | None:
    """The newest finished checkpoint step under `workdir` (Orbax renames a step's
    directory to its number when the step is complete), or None."""
    try:
        names = os.listdir(os.path.join(workdir, checkpoint_files.CHECKPOINT_DIR))
    except OSError:
        return None
    return max((int(n) for n in names if n.isdigit()), default=None)


def io_error(e: OSError, workdir: str) -> RunIOError:
    """`e` as a `RunIOError` whose message names the path and the checkpoint kept.

    Args:
      e: the error; workdir: the run directory.

    Returns:
      the error to raise (`from e`), with `e`'s errno.
    """
    path = e.filename or workdir
    step = latest_checkpoint_on_disk(workdir)
    kept = (
        "it has no checkpoint yet" if step is None else f"its last checkpoint (step {step}) is kept"
    )
    err = RunIOError(
        f"I/O error on {path}: {e.strerror or e}. The run stopped; {kept}. Free disk space "
        f"or make {workdir} writable, then rerun the same command to resume."
    )
    err.errno = e.errno  # not filename: OSError's str would then ignore the message
    return err


def close_all(closers, workdir: str, failure: BaseException | None) -> None:
    """Calls every `(what, fn)` of `closers` in order, whatever the others did. An error
    is raised (an OSError as `io_error`) only if the run had none (`failure` None) and it
    is the first; every other is logged, so a second error never hides the first."""
    first: Exception | None = None
    for what, fn in closers:
        try:
            fn()
        except Exception as e:
            if failure is None and first is None:
                first = e
            else:
                logging.error("could not also %s %s: %s: %s", what, workdir, type(e).__name__, e)
    if isinstance(first, OSError):
        raise io_error(first, workdir) from first
    if first is not None:
        raise first


def _jsonable(x):
    return json.loads(json.dumps(x))


def run_record(config, spec: RunSpec) -> dict[str, Any]:
    """What `config.json` holds: the requested config and what it resolved to.

    Args:
      config: the run config; spec: `resolve_config(config)`.

    Returns:
      a JSON-able dict with `config`, `model_config`, `task`, `window` and `seq_len`.
    """
    task = {"name": spec.task.name, **dataclasses.asdict(spec.task)}
    return _jsonable(
        {
            "config": config_to_dict(config),
            "model_config": dataclasses.asdict(spec.model_config),
            "task": task,
            "window": spec.window,
            "seq_len": spec.task.seq_len,
        }
    )


def config_digest(config) -> str:
    """A short hash of a run config (as config.json records it under "config"), written
    into summary.json so that a summary can be matched with the config it ended under."""
    return _digest(config_to_dict(config))


def _digest(config: dict) -> str:
    return hashlib.sha1(json.dumps(_jsonable(config), sort_keys=True).encode()).hexdigest()[:16]


def summary_mismatch(summary: dict[str, Any] | None, record: dict[str, Any] | None) -> str | None:
    """Why `summary` (summary.json) does not show `record` (config.json) finished, or None
    if it does: it must say "completed", under the same `steps` and (when it records one)
    the same config digest. A run extended, changed or cut short after it completed keeps
    its old summary until it ends again, so the status alone is not enough."""
    if not isinstance(summary, dict) or summary.get("status") != "completed":
        return "its summary.json does not say completed"
    config = record.get("config") if isinstance(record, dict) else None
    if not isinstance(config, dict):
        return "its config.json is missing or has no config"
    if summary.get("steps") != config.get("steps"):
        return (f"summary.json completed steps={summary.get('steps')} but config.json "
                f"asks for steps={config.get('steps')}")  # fmt: skip
    digest = summary.get("config_digest")
    # The digest of the config as config.json holds it, or as this code completes it: a run
    # recorded before an optional field existed hashed the fields it had.
    if digest is not None and digest not in (_digest(config), config_digest(config)):
        return "summary.json was written under another config than config.json holds"
    return None


# What may change when a run is continued: how long it trains, how often the loop logs,
# evaluates and saves, at which extra N it evaluates, and how the work is split
# (eval_batch_size; data_parallel and microbatches, which change results by rounding
# only). Every other
# field changes what is computed. `steps` too, under lr_schedule="cosine" (see
# `_guarded`): there it sets the decay horizon, so the LR of the steps left would change.
RESUME_FREE_FIELDS = frozenset({
    "steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
    "eval_passes", "eval_batch_size", "data_parallel", "microbatches",
    # The stopping rule, like `steps`, only decides when the run ends.
    "stop_metric", "stop_patience", "stop_min_delta", "stop_min_steps", "stop_min_value",
    # Diagnostics only: what is logged at each eval, not what is trained.
    "pass_stats_size",
})  # fmt: skip


def _fields(record) -> dict[str, Any]:
    # The resolved model and task (so e.g. window=None and the task's window compare
    # equal), then the other config fields.
    skip = {"task", "window", *MODEL_FIELDS}
    return {
        **{f"model.{k}": v for k, v in record["model_config"].items()},
        **{f"task.{k}": v for k, v in with_optional_task_knobs(record["task"]).items()},
        "window": record["window"],
        # A record written before an optional field existed ran with its default.
        **{k: v for k, v in config_to_dict(record["config"]).items() if k not in skip},
    }


def _structural(field: str) -> bool:
    # Fixes the checkpoint's shapes or the meaning of the data: no flag continues it.
    return field.startswith(("model.", "task.")) or field == "optimizer"


def only_when_it_ends(saved: dict[str, Any], requested: dict[str, Any]) -> bool:
    """Whether every field that differs between two run configs only decides when the run
    ends (`RESUME_FREE_FIELDS`; `steps` not under a cosine schedule): such a change
    continues a run (`check_workdir`; a sweep's `--on_config_change=continue`)."""
    # A config written before an optional field existed ran with its default.
    saved, requested = config_to_dict(saved), config_to_dict(requested)
    fields = {k for k in set(saved) | set(requested) if saved.get(k) != requested.get(k)}
    return not any(_guarded(f, saved, requested) for f in fields)


def _guarded(field: str, saved: dict[str, Any], requested: dict[str, Any]) -> bool:
    if field == "steps":
        return "cosine" in (saved.get("lr_schedule"), requested.get("lr_schedule"))
    return field not in RESUME_FREE_FIELDS


def check_workdir(
    workdir: str, record: dict[str, Any], *, allow_config_change: bool = False
) -> dict[str, Any]:
    """Checks that `record` (`run_record`) continues the run saved in `workdir`.

    A run is its whole resolved config. Fields in `RESUME_FREE_FIELDS` may change (and
    `steps`, unless lr_schedule is "cosine"); a change of any other field would continue
    the saved run under a label it was not trained with, so it is refused unless
    `allow_config_change`. The model, the task and the optimizer are refused always. A
    workdir without a checkpoint has nothing to continue: any config starts afresh.

    Args:
      workdir: the run directory; record: the record of the config to run now.
      allow_config_change: continue under the changed fields anyway.

    Returns:
      the record to write to config.json: `record`, plus `config_changes`, the saved
      run's list of changes with this one appended (`step`: the latest checkpoint, the
      step from which the new values apply; `fields`: {name: [saved, requested]};
      `allowed`: whether it needed allow_config_change).

    Raises:
      ConfigConflictError: naming each refused field with its saved and requested value.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    _check_steps_reach_the_checkpoint(workdir, record)
    try:
        saved = checkpoint_files.read_run_config(workdir)
    except ValueError as e:  # written atomically, so never torn by this code
        raise ConfigConflictError(
            f"{path} is unreadable ({e}); fix it, or delete it to restore it from the run "
            "record saved with the checkpoints"
        ) from e
    saved = _confirmed_by_checkpoints(workdir, saved)
    if saved is None:
        return record
    old, new = _fields(saved), _fields(record)
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)}  # fmt: skip
    records = saved.get("config_changes", [])
    if not changed:
        return {**record, "config_changes": records} if records else record
    step = latest_checkpoint_on_disk(workdir)
    if step is None:  # nothing was trained under the saved config: a fresh start
        logging.info("%s has no checkpoint: starting afresh under the new config", workdir)
        return record

    def describe(keys):
        return "; ".join(f"{k}: saved {changed[k][0]!r}, requested {changed[k][1]!r}" for k in keys)

    structural = [k for k in changed if _structural(k)]
    if structural:
        raise ConfigConflictError(
            f"workdir {workdir} holds a run with a different model/task/optimizer ("
            f"{describe(structural)}). Use a new --workdir, or delete this one to start over."
        )
    guarded = [k for k in changed if _guarded(k, saved["config"], record["config"])]
    if guarded and not allow_config_change:
        raise ConfigConflictError(
            f"workdir {workdir} holds a run with a different config ({describe(guarded)}): "
            "continuing it would label a run trained under the saved values with the new "
            "ones. Use a new --workdir, or pass --allow_config_change "
            "(allow_config_change=True) to continue it under the new values from its "
            f"latest checkpoint (recorded in {CONFIG_FILE} under config_changes)."
        )
    logging.info("continuing %s from step %s with changed fields [saved, now]: %s",
                 workdir, step, changed)  # fmt: skip
    entry = {"step": step, "fields": changed, "allowed": bool(guarded)}
    return {**record, "config_changes": [*records, entry]}


def _confirmed_by_checkpoints(workdir: str, saved: dict[str, Any] | None):
    """config.json's record (`saved`) checked against the record saved with the newest
    checkpoint: restored from it when config.json is missing, refused (naming the file
    and the fields) when they disagree on what was computed. Without this a lost or
    edited config.json would relabel the trained run silently."""
    step = latest_checkpoint_on_disk(workdir)
    if step is None:
        return saved
    path = os.path.join(workdir, CONFIG_FILE)
    at, ckpt = _newest_saved_record(workdir)
    if saved is None:
        if ckpt is None:
            raise ConfigConflictError(
                f"{path} is missing but {workdir} holds checkpoints (up to step {step}) that "
                f"record no config: the run's identity is lost. Restore {path}, or use a new "
                "--workdir."
            )
        logging.warning("%s is missing: taking the run record saved with checkpoint step %d",
                        path, at)  # fmt: skip
        return ckpt
    if ckpt is None:  # checkpoints saved before records were: config.json is all there is
        return saved
    mine, theirs = _fields(saved), _fields(ckpt)
    # Fields changed on a rerun (allowed, or free) differ legitimately until the next save.
    entries = saved.get("config_changes", [])
    changed_later = {f for entry in entries for f in entry.get("fields", {})}
    differ = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)
              and k not in RESUME_FREE_FIELDS and k not in changed_later]  # fmt: skip
    if differ:
        what = "; ".join(f"{k}: config.json {mine.get(k)!r}, checkpoint {theirs.get(k)!r}"
                         for k in differ)  # fmt: skip
        raise ConfigConflictError(
            f"{path} disagrees with the run record saved with checkpoint step {at} "
            f"({what}): it was edited or copied from another run. Delete it to restore it "
            "from the checkpoint, or use a new --workdir."
        )
    return saved


def _newest_saved_record(workdir: str) -> tuple[int | None, dict[str, Any] | None]:
    directory = os.path.join(workdir, checkpoint_files.CHECKPOINT_DIR)
    try:
        steps = sorted((int(n) for n in os.listdir(directory) if n.isdigit()), reverse=True)
    except OSError:
        return None, None
    for step in steps:
        record = checkpoint_files.read_saved_record(directory, step)
        if record is not None:
            return step, record
    return None, None


def _check_steps_reach_the_checkpoint(workdir: str, record: dict[str, Any]) -> None:
    # A model trained past `steps` cannot stand as a run of `steps`: it would be recorded
    # as completed at the lower count with the longer-trained parameters.
    step, steps = latest_checkpoint_on_disk(workdir), record["config"]["steps"]
    if step is not None and step > steps:
        raise ConfigConflictError(
            f"workdir {workdir} holds a checkpoint at step {step}, past steps={steps}: the "
            f"model trained {step} steps would be recorded as a {steps}-step run. Use a new "
            f"--workdir for {steps} steps, or steps >= {step} to continue this one."
        )
