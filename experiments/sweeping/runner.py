"""Runs a sweep: plans every run against its directory, launches what is left, watches.

A run's identity is its whole config: a finished run is reused only if the config it
recorded (config.json) equals the one the sweep would launch now; an unfinished one is
resumed under the same condition. A run whose recorded config differs is refused (the
default) or, with on_config_change="rerun", trained afresh under `<name>,cfg=<hash>`.
A run recorded under another directory name (an older naming scheme, or another sweep's
run in a shared runs directory) is found by its config and reused or resumed there.
The sweep holds a lock on its workdir and on its runs_dir while it runs; each training run
holds its own (`run_lock.hold_run`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from experiments.sweeping import grid, progress
from experiments.sweeping.launch import STDOUT_FILE, Launcher
from experiments.sweeping.lock import DirLock
from experiments.sweeping.rundir import RunDir
from sleep_consolidation.training.checkpoint_files import CONFIG_FILE
from sleep_consolidation.training.run_config import config_to_dict
from sleep_consolidation.training.run_dir import only_when_it_ends

RESULTS_FILE = "results.jsonl"
SUBMITIT_DIR = "submitit"
COMMAND_FILE = "command.sh"
ON_CONFIG_CHANGE = ("refuse", "rerun", "continue")
NEW, RESUME, FINISHED, CHANGED = "new", "resume", "finished", "config changed"


class ConfigChangedError(ValueError):
    """A run directory holds a run of another config than the one the sweep launches."""


@dataclasses.dataclass
class PlannedRun:
    run: grid.Run
    run_dir: str
    overrides: list[str]  # the --config. flags it is launched with
    config: dict[str, Any]  # the config it trains, as config.json records it
    status: str  # NEW | RESUME | FINISHED | CHANGED
    changed: list[str] = dataclasses.field(default_factory=list)  # for CHANGED

    @property
    def name(self) -> str:
        """How the progress view and the logs name it (`Run.label`: `passes=4,seed=3`)."""
        return self.run.label

    @property
    def steps(self) -> int:
        return int(self.config.get("steps") or 0)


def _jsonable(x):
    return json.loads(json.dumps(x))


def config_diff(recorded: Any, launched: Any, prefix: str = "") -> list[str]:
    """`field: recorded -> launched` for every leaf that differs."""
    if isinstance(recorded, dict) and isinstance(launched, dict):
        out = []
        for k in sorted(set(recorded) | set(launched)):
            out += config_diff(recorded.get(k), launched.get(k), f"{prefix}{k}.")
        return out
    if recorded != launched:
        return [f"{prefix[:-1]}: {recorded!r} -> {launched!r}"]
    return []


def _status(path: str, config: dict) -> tuple[str, list[str]]:
    rd = RunDir(path)
    recorded = rd.config()
    if recorded is None:
        if os.path.exists(os.path.join(path, CONFIG_FILE)):  # written atomically: not torn
            return CHANGED, [f"{CONFIG_FILE} is not a run record (unreadable or edited)"]
        return NEW, []
    # A run recorded before an optional field existed ran with its default.
    diff = config_diff(config_to_dict(recorded.get("config") or {}), config)
    if diff:
        return CHANGED, diff
    return (FINISHED if rd.finished() else RESUME), []


def _config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def recorded_configs(runs_dir: str) -> list[tuple[str, dict]]:
    """(run directory, the config its config.json records) for every run in `runs_dir`,
    in name order."""
    if not os.path.isdir(runs_dir):
        return []
    out = []
    for name in sorted(os.listdir(runs_dir)):
        record = RunDir(os.path.join(runs_dir, name)).config()
        if record and isinstance(record.get("config"), dict):
            out.append((os.path.join(runs_dir, name), config_to_dict(record["config"])))
    return out


def _recorded_elsewhere(known, config: dict) -> str | None:
    """The directory that already holds the run of `config` under another name (an older
    naming, or another sweep sharing the runs directory): the one that recorded exactly
    `config`. (Never a near match: "continue" would then rewrite another sweep's run.)"""
    key = _config_key(config)
    return next((path for path, recorded in known if _config_key(recorded) == key), None)


def plan(sweep: grid.Sweep, runs_dir: str, on_config_change: str = "refuse") -> list[PlannedRun]:
    """Every run of `sweep` with its directory, launch flags, config and status.

    With on_config_change="rerun", a CHANGED run moves to `<name>,cfg=<hash of config>`
    (itself NEW, RESUME or FINISHED); with "continue", a CHANGED run whose changes only
    decide when it ends (a longer cap, a changed stopping rule: `run_dir.only_when_it_ends`) is
    resumed under the new values, which `experiments.train` records in its config.json
    (`config_changes`), and any other CHANGED run stays CHANGED; with "refuse" it stays
    CHANGED.
    """
    if on_config_change not in ON_CONFIG_CHANGE:
        raise ValueError(f"on_config_change must be one of {ON_CONFIG_CHANGE}")
    out = []
    known = None
    for run in sweep.runs():
        flags = sweep.overrides(run)
        config = _jsonable(grid.load_config_file(sweep.config, sweep.config_arg, flags).to_dict())
        config = config_to_dict(config)  # with the optional fields, as training records it
        run_dir = os.path.join(runs_dir, run.name)
        status, diff = _status(run_dir, config)
        if status in (NEW, CHANGED):  # perhaps recorded under another name: found by config
            known = recorded_configs(runs_dir) if known is None else known
            found = _recorded_elsewhere(known, config)
            if found is not None:
                run_dir = found
                status, diff = _status(run_dir, config)
        if (
            status == CHANGED
            and on_config_change == "continue"
            and only_when_it_ends(RunDir(run_dir).config().get("config") or {}, config)
        ):
            status = RESUME
        if status == CHANGED and on_config_change == "rerun":
            digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
            run_dir = f"{run_dir},cfg={digest}"
            status, diff = _status(run_dir, config)
        out.append(PlannedRun(run, run_dir, flags, config, status, diff))
    return out


def check_no_changes(planned: Sequence[PlannedRun]) -> None:
    """Raises ConfigChangedError naming each changed run and its differing fields."""
    bad = [p for p in planned if p.status == CHANGED]
    if bad:
        lines = [f"  {p.run_dir}: " + "; ".join(p.changed) for p in bad]
        raise ConfigChangedError(
            f"{len(bad)} run(s) were trained with another config than this sweep launches "
            "(recorded -> now):\n" + "\n".join(lines) + "\nRerun them under new names with "
            "--on_config_change=rerun, or delete those directories."
        )


def check_configs(planned: Sequence[PlannedRun]) -> None:
    """Resolves every run's config through the training validation (`resolve_config`),
    so that a bad sweep is refused before anything trains.

    Raises:
      ValueError: naming the first bad run, its field and how many runs are bad.
    """
    from sleep_consolidation.training.run_config import (
        resolve_config,  # imports JAX: only when asked
    )

    bad = []
    for p in planned:
        try:
            resolve_config(p.config)
        except ValueError as e:
            bad.append((p, e))
    if bad:
        p, e = bad[0]
        more = f" ({len(bad) - 1} more of the {len(planned)} runs fail too)" if len(bad) > 1 else ""
        raise ValueError(f"run {p.run.name}: {e}{more}")


def trackers(planned: Sequence[PlannedRun]) -> list[progress.RunProgress]:
    state = {FINISHED: progress.SKIPPED}
    return [progress.RunProgress(p.name, p.run_dir, p.steps, state.get(p.status, progress.QUEUED))
            for p in planned]  # fmt: skip


def describe(planned: Sequence[PlannedRun], parallel: int, prior_run_s=None) -> str:
    """The dry-run listing: each run, its status and steps, and the estimated time."""
    tracked = trackers(planned)
    for t in tracked:
        if t.state == progress.SKIPPED or os.path.isdir(t.run_dir):
            t.read()  # measured rates of finished (and partial) runs
    width = max([len(p.name) for p in planned] + [3])
    lines = [f"{'run':<{width}}  {'status':<14}  steps  command"]
    for p, t in zip(planned, tracked):
        status = p.status + (f" (step {t.step})" if p.status == RESUME else "")
        lines.append(f"{p.name:<{width}}  {status:<14}  {p.steps:>5}  " + " ".join(p.overrides))
        if os.path.basename(p.run_dir) != p.run.name:  # found by its config under another name
            lines.append(f"{'':<{width}}    in {p.run_dir}")
        lines += [f"{'':<{width}}    changed: {c}" for c in p.changed]
    todo = sum(p.status != FINISHED for p in planned)
    eta = progress.remaining_s(tracked, parallel, prior_run_s)
    lines.append(
        f"{todo} of {len(planned)} runs to go, {parallel} at a time; estimated "
        + (progress.fmt_s(eta) if eta is not None else "? (no run measured yet)")
    )
    return "\n".join(lines)


def run_sweep(
    sweep: grid.Sweep,
    workdir: str,
    launcher: Launcher,
    *,
    runs_dir: str | None = None,
    on_config_change: str = "refuse",
    train_command: Sequence[str] = (sys.executable, "-m", "experiments.train"),
    train_flags: Sequence[str] = (),
    console=None,
    poll_s: float = 2.0,
    plain_every: float = 30.0,
) -> list[dict]:
    """Trains every run of `sweep` that has not finished, through `launcher`.

    Args:
      sweep: the grid, seeds and base config.
      workdir: the sweep's directory (lock, results.jsonl, submitit logs).
      launcher: where runs go (`launch.Launcher`).
      runs_dir: the runs' directories (default `<workdir>/runs`); sweeps of one base
        config given the same runs_dir reuse each other's finished runs.
      on_config_change: "refuse" or "rerun" (see the module docstring).
      train_command: the program each run executes, before its flags.
      train_flags: extra flags for every run that do not change what it computes
        (e.g. --compilation_cache_dir).
      console: a rich Console for the progress display (default stdout).

    Returns:
      One record per run (`collect_results`), also written to `<workdir>/results.jsonl`.

    Raises:
      LockedError: another sweep is running on `workdir` or `runs_dir`.
      ConfigChangedError: with on_config_change="refuse", a run recorded another config.
    """
    runs_dir = os.path.join(workdir, "runs") if runs_dir is None else runs_dir
    sweep.runs()  # an unknown field fails here, before a lock makes any directory
    # The runs directory is locked too, even under the workdir: another sweep may be
    # given it as its --runs_dir.
    locks = [DirLock(workdir), DirLock(runs_dir)]
    held = []
    try:
        for lock in locks:
            lock.acquire()
            held.append(lock)
        planned = plan(sweep, runs_dir, on_config_change)
        check_no_changes(planned)
        _launch_all(planned, sweep, workdir, launcher, train_command, train_flags, console,
                    poll_s, plain_every)  # fmt: skip
        return collect_results(workdir, planned)
    finally:
        for lock in reversed(held):
            lock.release()


def _launch_all(planned, sweep, workdir, launcher, train_command, train_flags, console,
                poll_s, plain_every) -> None:  # fmt: skip
    tracked = {p.name: t for p, t in zip(planned, trackers(planned))}
    title = f"sweep {sweep.spec} ({workdir})"
    view = progress.SweepProgress(title, list(tracked.values()), launcher.parallel, console,
                                  plain_every=plain_every, prior_run_s=sweep.est_run_s)  # fmt: skip
    todo = [p for p in planned if p.status != FINISHED]
    running: dict[str, tuple[PlannedRun, Any, float]] = {}
    failed = []
    with view:
        for p in planned:
            if p.status == FINISHED:
                view.log(f"skip finished {p.name}")
        if todo:
            view.log(f"{len(todo)} of {len(planned)} runs to go, {launcher.parallel} at a time "
                     f"({launcher.kind} launcher)")  # fmt: skip
        try:
            while todo or running:
                n = launcher.free_slots(len(todo))
                batch, todo = todo[:n], todo[n:]
                items = []
                for p in batch:
                    os.makedirs(p.run_dir, exist_ok=True)
                    cmd = [*train_command, f"--config={sweep.spec}", f"--workdir={p.run_dir}",
                           *p.overrides, *train_flags]  # fmt: skip
                    with open(os.path.join(p.run_dir, COMMAND_FILE), "w") as f:
                        f.write(shlex.join(cmd) + "\n")
                    items.append((cmd, p.run_dir))
                for p, job in zip(batch, launcher.submit(items) if items else []):
                    running[p.name] = (p, job, time.time())
                    tracked[p.name].state = progress.RUNNING
                    view.log(f"start {p.name} ({'resume' if p.status == RESUME else 'new'}, "
                             f"job {job.job_id})")  # fmt: skip
                for name, (p, job, t0) in list(running.items()):
                    rc = launcher.exit_code(job)
                    if rc is None:
                        continue
                    del running[name]
                    ok = rc == 0 and RunDir(p.run_dir).finished()
                    tracked[name].state = progress.DONE if ok else progress.FAILED
                    tracked[name].read()
                    view.log(
                        f"{name}: exit {rc} after {time.time() - t0:.0f}s"
                        + ("" if ok else f" (see {os.path.join(p.run_dir, STDOUT_FILE)})")
                    )
                    if not ok:
                        failed.append(name)
                view.refresh()
                if running:
                    time.sleep(poll_s)
        except BaseException:
            launcher.cancel([job for _, job, _ in running.values()])
            raise
    if failed:
        view.log(f"failed runs (see their {STDOUT_FILE}): {failed}")


def run_record(run_dir: str, seed: int, point: str = "", overrides=None) -> dict:
    """A run's record as results.jsonl holds it, from its summary.json."""
    s = RunDir(run_dir).summary() or {}
    return {"point": point, "overrides": dict(overrides or {}), "seed": seed,
            "status": s.get("status", "missing"), "eval": s.get("eval", {}),
            # every process's training time (a resumed run's too)
            "train_s": s.get("train_s_total", s.get("train_s")),
            "wall_s": s.get("wall_s"), "run_dir": run_dir,
            # The stopping rule's outcome (train.py); None for older runs.
            **{k: s.get(k) for k in ("converged", "stop_reason", "stopped_at",
                                     "steps_to_90pct")},
            # Each machine that trained the run (machine.py); None for older runs.
            "machines": s.get("machines")}  # fmt: skip


def collect_results(workdir: str, planned: Sequence[PlannedRun]) -> list[dict]:
    """One record per run from its summary.json; rewrites `<workdir>/results.jsonl`."""
    records = [run_record(p.run_dir, p.run.seed, p.run.point_name, p.run.point) for p in planned]
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, RESULTS_FILE)
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(path + ".tmp", path)
    return records
