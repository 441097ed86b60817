"""Launching training runs through submitit: on this machine or on a Slurm cluster.

`local` runs each job as a local process (submitit's LocalExecutor), at most `parallel` at
once, each pinned to its own core; `slurm` submits every run as one job array (at most
`parallel` running at once); `debug` runs each job inside this process, one after another
(submitit's DebugExecutor: breakpoints work). A job runs the run's `experiments.train`
command, its output appended to `<run_dir>/stdout.log`. Importing this module must stay
cheap (no JAX): every job process unpickles `train_job` from it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Sequence

import submitit

LAUNCHERS = ("local", "slurm", "debug")
STDOUT_FILE = "stdout.log"
_A_WEEK_MIN = 7 * 24 * 60  # LocalExecutor kills a job after timeout_min (default 2 min)


def train_job(command: Sequence[str], run_dir: str, core: int | None, env: dict | None) -> int:
    """One job: runs `command`, pinned to `core` if given; returns its exit code.

    `env` replaces the job's environment (None: keep it), so a local run sees the GPUs the
    sweep sees (LocalExecutor hides them unless asked for).
    """
    if core is not None:
        os.sched_setaffinity(0, {core})  # before the training process exists: it inherits
    with open(os.path.join(run_dir, STDOUT_FILE), "a") as out:
        return subprocess.call(list(command), stdout=out, stderr=subprocess.STDOUT, env=env)


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """Per-run resources of a Slurm job (None: the cluster's default)."""

    partition: str | None = None
    time_min: int = 240
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()  # shell lines before the job (module load ..., source ...)

    def parameters(self, parallel: int) -> dict:
        """AutoExecutor.update_parameters keywords."""
        p = dict(timeout_min=self.time_min, cpus_per_task=self.cpus_per_task,
                 gpus_per_node=self.gpus_per_node, mem_gb=self.mem_gb,
                 slurm_partition=self.partition, slurm_account=self.account,
                 slurm_qos=self.qos, slurm_constraint=self.constraint,
                 slurm_array_parallelism=parallel, slurm_setup=list(self.setup) or None,
                 name="sweep")  # fmt: skip
        return {k: v for k, v in p.items() if v is not None}


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


class Launcher:
    """Submits `train_job`s and says how many more may start now."""

    def __init__(self, kind: str, folder: str, parallel: int, slurm: SlurmOptions | None = None):
        if kind not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {LAUNCHERS}, got {kind!r}")
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.kind, self.parallel = kind, parallel
        folder = os.path.join(folder, "%j")
        if kind == "local":
            self.executor = submitit.LocalExecutor(folder)
            self.executor.update_parameters(timeout_min=_A_WEEK_MIN)
            cores = available_cores()
            # One run per core; with one run at a time (or cores unknown) nothing is pinned.
            pin = parallel > 1 and cores
            self._free = [cores[i % len(cores)] if pin else None for i in range(parallel)]
        elif kind == "slurm":
            missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
            if missing:  # submitit would fail later, deep in a traceback
                raise ValueError(
                    f"--launcher=slurm needs Slurm's {' and '.join(missing)} on PATH: run the "
                    "sweep on a cluster login node, or use --launcher=local on this machine"
                )
            self.executor = submitit.AutoExecutor(folder, cluster="slurm")
            self.executor.update_parameters(**(slurm or SlurmOptions()).parameters(parallel))
        else:
            self.executor = submitit.DebugExecutor(folder)
        self._cores: dict[str, int | None] = {}

    def free_slots(self, pending: int) -> int:
        """Jobs that may be submitted now (Slurm queues the whole array itself)."""
        return len(self._free) if self.kind == "local" else (pending if self.kind == "slurm" else 1)

    def submit(self, jobs: Sequence[tuple[Sequence[str], str]]) -> list:
        """Submits (command, run_dir) pairs (at most `free_slots`); returns submitit jobs."""
        if self.kind == "slurm":
            with self.executor.batch():  # one job array
                out = [self.executor.submit(train_job, c, d, None, None) for c, d in jobs]
            return out
        out = []
        for command, run_dir in jobs:
            core = self._free.pop() if self.kind == "local" else None
            job = self.executor.submit(train_job, command, run_dir, core, dict(os.environ))
            self._cores[job.job_id] = core
            if self.kind == "debug":
                job.wait()  # runs it here and now
            out.append(job)
        return out

    def exit_code(self, job) -> int | None:
        """None while `job` runs; then the training process's exit code (-1: the job
        itself failed, e.g. killed)."""
        if not job.done():
            return None
        if job.job_id in self._cores and self.kind == "local":
            self._free.append(self._cores.pop(job.job_id))
        try:
            return int(job.result())
        except Exception:  # noqa: BLE001 - submitit raises a variety when a job dies
            return -1

    def cancel(self, jobs) -> None:
        for job in jobs:
            job.cancel(check=False)
