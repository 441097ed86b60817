"""Sweep a grid of config overrides x seeds, then write a paired-seed table and plots.

    python -m experiments.sweep --sweep=experiments/configs/sweeps.py:main --workdir=runs/main

The sweep file's `get_config(arg)` returns (`experiments/configs/sweeps.py`): `config` (the
base config file), `config_arg` (its variant, e.g. "tiny"), `axes` (dotted field -> tuple
of values; join fields with "+" to vary them together), `fixed` (overrides for every run),
`seeds`, `parallel` (runs at once, one per core), `baseline` (the paired point each point
is compared against), `x_field` (the plot's x axis), `metric`, `frontier` (a threshold:
also tabulate each run's depth frontier) and `est_run_s` (seconds per run, for the ETA
before any run is measured). Override any of them, or add axes and fixed overrides, from
the command line: --sweep.seeds=0,1,2  --sweep.axes.passes=1,8  --sweep.fixed.steps=500
--sweep.axes.eviction=hard,sliding (a comma list: strings, true/false, numbers or
Python literals such as ('attn','ssm'),('attn','attn')).

Outputs under --workdir: runs/<swept fields>,seed=<s>/ (each a normal training workdir
with its command.sh and stdout.log, named by its swept fields and seed, e.g.
passes=4,seed=3; the fixed overrides are in its config.json), results.jsonl, summary.md,
sweep.png, submitit/ (job logs). Tables, plots and the progress view name a run by the
swept fields that vary and the compared ones. Rerunning skips finished runs and resumes
unfinished ones -- if their recorded config.json equals what the sweep launches now (else
see --on_config_change). A run recorded under another name (runs were once named by what
they changed in the base config) is found by its config.json and reused there. Sweeps of
one base config given the same --runs_dir share their runs the same way: e.g. the
beyond-the-paper sweeps reuse the main job's N = 1, 2, 4 runs. --dry_run validates every
run's config as training would and lists the runs and the estimated time; a bad one is
refused naming the run and the field. A lock (sweep.lock) keeps a second sweep off the
same workdir.

On a Slurm cluster: --launcher=slurm --slurm_partition=gpu --slurm_gpus_per_node=1
--slurm_cpus_per_task=8 --slurm_time_min=120 [--slurm_mem_gb, --slurm_account,
--slurm_qos, --slurm_constraint, --slurm_setup='module load cuda'] (run it where sbatch
works; each run is one task of a job array, `parallel` at once).
"""

from __future__ import annotations

import sys
import time

from absl import app, flags
from ml_collections import config_flags

from experiments import usage
from experiments.sweeping import cli, grid, lock, report, runner

PROG = "experiments.sweep"

_SWEEP = config_flags.DEFINE_config_file(
    "sweep", None, "sweep file (get_config returns the sweep)", lock_config=False,
    accept_new_attributes=True,  # new axes / fixed overrides; top-level names are checked
)  # fmt: skip
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory of the whole sweep")
_RUNS_DIR = flags.DEFINE_string(
    "runs_dir",
    None,
    "where the runs live (default <workdir>/runs); sweeps of one base "
    "config given the same runs_dir reuse each other's finished runs",
)
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", None, "persistent XLA compilation cache shared by the runs"
)
flags.mark_flags_as_required(["sweep", "workdir"])


def main(argv):
    if len(argv) > 1:
        usage.fail(f"unexpected arguments: {argv[1:]}", PROG)
    s, workdir = _SWEEP.value, _WORKDIR.value
    runs_dir = _RUNS_DIR.value or f"{workdir}/runs"
    try:  # everything a person can get wrong, refused before anything is written
        sweep = grid.Sweep.from_config(s)
        planned = runner.plan(sweep, runs_dir, cli.ON_CONFIG_CHANGE.value)
        runner.check_configs(planned)
        if cli.DRY_RUN.value:
            print(runner.describe(planned, sweep.parallel, sweep.est_run_s))
            return
        launcher = cli.make_launcher(workdir, sweep.parallel)
    except ValueError as e:
        usage.fail(str(e), PROG)
    start = time.time()
    try:
        records = runner.run_sweep(
            sweep, workdir, launcher, runs_dir=_RUNS_DIR.value,
            on_config_change=cli.ON_CONFIG_CHANGE.value, plain_every=cli.PLAIN_EVERY.value,
            train_flags=[f"--compilation_cache_dir={_CACHE.value}"] if _CACHE.value else [],
        )  # fmt: skip
    except (ValueError, lock.LockedError) as e:  # changed runs, a held lock
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    table = report.write_report(workdir, s, records)
    print(table)
    print(f"\nplot: {workdir}/{report.PLOT_FILE}\nsummary: {workdir}/{report.SUMMARY_MD}")
    print(f"sweep wall time: {time.time() - start:.0f}s")
    bad = [r["point"] + f" seed {r['seed']}" for r in records if r["status"] != "completed"]
    if bad:
        raise SystemExit(f"runs not completed: {bad}")


def _parse(argv: list[str]) -> list[str]:
    """usage.parser, with the axes and fixed overrides of dotted fields set afterwards."""
    argv, dotted = cli.split_dotted(argv)
    sys.argv[:] = argv  # config_flags reads its overrides from sys.argv itself
    modules = [PROG, "experiments.sweeping.cli"]
    rest = usage.parser(PROG, __doc__, modules, config_flag="sweep")(argv)
    cli.apply_dotted(_SWEEP.value, dotted)
    return rest


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
