"""A run's directory: its file names, its record (`config.json`), the check that a rerun
continues the same run, and the JSON I/O, written so that a kill mid-write leaves a file
that the next run can read.

Layout (checkpoints: see `checkpointing.py`):

    workdir/config.json     `run_record`: the requested config and what it resolved to
    workdir/metrics.jsonl   one JSON object per logged step (appended, whole lines)
    workdir/theta.jsonl     rule="parametric": the rule's coefficients at eval steps
    workdir/summary.json    the run's status and last eval (rewritten atomically)
    workdir/events.out.tfevents.*  TensorBoard (train and eval curves)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from absl import logging

from sleep_consolidation import checkpointing
from sleep_consolidation.run_config import RunSpec, config_to_dict

CONFIG_FILE = checkpointing.CONFIG_FILE
METRICS_FILE = "metrics.jsonl"
THETA_FILE = "theta.jsonl"  # rule="parametric": describe_theta per ssm layer at eval steps
SUMMARY_FILE = "summary.json"


class ConfigConflictError(ValueError):
    """The workdir holds a run whose model, task or optimizer differs from the config."""


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


def _identity(record) -> dict[str, Any]:
    # Everything that fixes the shape of the checkpoint or the meaning of the data.
    return {
        **{f"model.{k}": v for k, v in record["model_config"].items()},
        **{f"task.{k}": v for k, v in record["task"].items()},
        "optimizer": record["config"]["optimizer"],
    }


def check_workdir(workdir: str, record: dict[str, Any]) -> None:
    """Refuses a workdir whose saved run has a different model, vocab, task or optimizer.

    Raises:
      ConfigConflictError: naming each differing field with its saved and requested value.
    """
    saved = checkpointing.read_run_config(workdir)
    if saved is None:
        return
    old, new = _identity(saved), _identity(record)
    diffs = [f"{k}: saved {old.get(k)!r}, requested {new.get(k)!r}"
             for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]  # fmt: skip
    if diffs:
        raise ConfigConflictError(
            f"workdir {workdir} holds a run with a different model/task/optimizer ("
            + "; ".join(diffs)
            + "). Use a new --workdir, or delete this one to start over."
        )
    changed = {k: (saved["config"].get(k), v) for k, v in record["config"].items()
               if saved["config"].get(k) != v}  # fmt: skip
    if changed:
        logging.info("continuing %s with changed fields (saved -> now): %s", workdir, changed)


# ---------------------------------------------------------------------------------------
# JSON I/O
# ---------------------------------------------------------------------------------------


def write_json(path: str, obj) -> None:
    """Writes `obj` to `path` atomically (a temporary file, then `os.replace`), so that a
    reader sees the old or the new file, never a torn one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def append_jsonl(path: str, obj) -> None:
    """Appends `obj` to `path` as one JSON line."""
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


def truncate_jsonl(path: str, last_step: int) -> None:
    """Drops the lines of `path` logged after `last_step` (they will be logged again)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= last_step]
    with open(path + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)
