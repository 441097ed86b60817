"""Finished runs kept across machines: their small record files, committed, without
checkpoints.

A session's machine can be replaced by a fresh one between sessions (BUILD_NOTES.md "A
fresh machine each session"), and with it every run directory. `keep` copies what a sweep
and its report read of each *finished* run (config.json, summary.json, metrics.jsonl,
theta.jsonl and the sweep's command.sh) into a folder small enough to commit; `restore`
copies them back into a runs directory, where the sweep then finds those runs finished and
skips them, and its report (tables, intervals, verdict) is rebuilt without training
anything. Runs still in flight are never kept: without their checkpoints they could not
resume. What needs a run's parameters (a warm start's `init_from`, the fast-weight probe,
analyze.py) cannot use a kept copy: keep a study's source runs' machine, or retrain them.

    python -m experiments.sweeping.keep --runs_dir=runs/depth/runs_sliding \
        --to=results/depth/sliding/runs            # after the sweep
    python -m experiments.sweeping.keep --restore --runs_dir=runs/depth/runs_sliding \
        --to=results/depth/sliding/runs            # on a fresh machine, before it
"""

from __future__ import annotations

import os
import shutil

from experiments.sweeping.rundir import RunDir
from experiments.sweeping.runner import COMMAND_FILE
from sleep_consolidation.training.checkpoint_files import CONFIG_FILE
from sleep_consolidation.training.run_dir import METRICS_FILE, SUMMARY_FILE, THETA_FILE

# What the sweep's plan, records and report read; never a checkpoint.
KEPT_FILES = (CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, THETA_FILE, COMMAND_FILE)


def _run_names(folder: str) -> list[str]:
    """Every run directory below `folder` (one holding config.json), as a path relative to
    it: a sweep's flat `runs/<name>` and the recipe study's `runs/n=16/<recipe>/seed=0`."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder!r} is not a directory of run directories")
    names = []
    for root, dirs, files in os.walk(folder):
        if CONFIG_FILE in files and root != folder:
            names.append(os.path.relpath(root, folder))
            dirs.clear()  # a run's own folders (checkpoints) hold no runs
        dirs.sort()
    return sorted(names)


def _copy_run(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for name in KEPT_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def keep(runs_dir: str, to: str) -> tuple[list[str], list[str]]:
    """Copies the record files of every finished run in `runs_dir` to `to/<run name>/`
    (replacing an older copy). Returns (kept, left out: unfinished runs)."""
    kept, left = [], []
    for name in _run_names(runs_dir):
        src = os.path.join(runs_dir, name)
        if not RunDir(src).finished():
            left.append(name)
            continue
        dst = os.path.join(to, name)
        shutil.rmtree(dst, ignore_errors=True)  # no file of an older copy survives
        _copy_run(src, dst)
        kept.append(name)
    return kept, left


def restore(to: str, runs_dir: str) -> tuple[list[str], list[str]]:
    """Copies the kept runs in `to` back into `runs_dir`. A run directory that already
    exists there is left as it is (it may hold a newer run, or checkpoints). Returns
    (restored, left alone)."""
    restored, left = [], []
    for name in _run_names(to):
        src, dst = os.path.join(to, name), os.path.join(runs_dir, name)
        if not RunDir(src).finished():
            raise ValueError(f"{src!r} is not a finished run (config.json and summary.json)")
        if os.path.exists(dst):
            left.append(name)
            continue
        _copy_run(src, dst)
        restored.append(name)
    return restored, left


def main(argv):
    del argv
    from absl import app, flags

    f = flags.FLAGS
    try:
        if f.restore:
            done, left = restore(f.to, f.runs_dir)
            print(f"restored {len(done)} finished runs into {f.runs_dir}")
            lines = [f"  left alone (already in {f.runs_dir}): {n}" for n in left]
        else:
            done, left = keep(f.runs_dir, f.to)
            print(f"kept {len(done)} finished runs in {f.to} (no checkpoints)")
            lines = [f"  not finished, not kept: {n}" for n in left]
    except (FileNotFoundError, ValueError) as e:  # a clear line, not a traceback
        raise app.UsageError(str(e)) from None
    for line in lines:
        print(line)


def define_flags():
    """The command line, defined only when this module runs as a program."""
    from absl import flags

    flags.DEFINE_string(
        "runs_dir", None, "a sweep's --runs_dir (directories of runs)", required=True
    )
    flags.DEFINE_string("to", None, "the folder of kept runs (to commit)", required=True)
    flags.DEFINE_bool("restore", False, "copy the kept runs back into --runs_dir")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
