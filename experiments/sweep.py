"""Sweep a grid of config overrides x seeds, then write a paired-seed table and plots.

    python -m experiments.sweep --sweep=experiments/configs/sweeps.py:main --workdir=runs/main

The sweep file's `get_config(arg)` returns: `config` (the base config file), `config_arg`
(its variant, e.g. "tiny"), `axes` (dotted field -> list of values; join fields with "+" to
vary them together), `fixed` (overrides for every run), `seeds`, `parallel` (processes at
once, one per core), `baseline` (the paired point each point is compared against, default
{"passes": 1}), `x_field` (the plot's x axis), `metric`, and `frontier` (a threshold: also
tabulate each run's depth frontier, `sweep.frontier_table`). Override any of them with
--sweep.<field>=... . Outputs under --workdir: runs/<changes>,seed=<s>/ (each a normal
training workdir, named by the fields it changes in the base config; "base" if none),
results.jsonl, summary.md, sweep.png. Rerunning skips finished runs and resumes unfinished
ones. Sweeps of one base config given the same --runs_dir share their runs: e.g. the
beyond-the-paper sweeps reuse the main job's N = 1, 2, 4 runs.
"""

from __future__ import annotations

import os
import time

from absl import app, flags
from ml_collections import config_flags

from sleep_consolidation import sweep

_SWEEP = config_flags.DEFINE_config_file("sweep", None, "sweep file (get_config returns the sweep)")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory of the whole sweep")
_RUNS_DIR = flags.DEFINE_string(
    "runs_dir",
    None,
    "where the runs live (default <workdir>/runs); sweeps of one base "
    "config given the same runs_dir reuse each other's finished runs",
)
flags.mark_flags_as_required(["sweep", "workdir"])


def main(argv):
    del argv
    s = _SWEEP.value
    workdir = _WORKDIR.value
    axes, fixed = sweep.axes_and_fixed(s)
    base = sweep.load_config_file(s.config, s.get("config_arg", ""))
    start = time.time()
    records = sweep.run_sweep(
        s.config,
        s.get("config_arg", ""),
        axes,
        list(s.seeds),
        workdir,
        parallel=s.get("parallel", 2),
        fixed=fixed,
        base_config=base,
        runs_dir=_RUNS_DIR.value,
    )
    baseline = sweep.plain(s.get("baseline", {"passes": 1}))
    metric = s.get("metric", "acc")
    table = sweep.summary_table(records, metric=metric, baseline=baseline)
    cross = sweep.eval_n_table(records, metric=metric)
    if cross is not None:
        table += "\n\n" + cross
    if s.get("frontier") is not None:
        table += "\n\n" + sweep.frontier_table(records, s.frontier, metric=metric)
    png = sweep.plot_sweep(
        records,
        os.path.join(workdir, "sweep.png"),
        x_field=s.get("x_field", "passes"),
        metric=metric,
    )
    with open(os.path.join(workdir, sweep.SUMMARY_MD), "w") as f:
        f.write(
            f"# Sweep {s.config}:{s.get('config_arg', '')}\n\naxes: {axes}\nfixed: {fixed}\n"
            f"seeds: {list(s.seeds)}\n\n{table}\n\n![sweep](sweep.png)\n"
        )
    print(table)
    print(f"\nplot: {png}\nsummary: {os.path.join(workdir, sweep.SUMMARY_MD)}")
    print(f"sweep wall time: {time.time() - start:.0f}s")
    bad = [r["point"] + f" seed {r['seed']}" for r in records if r["status"] != "completed"]
    if bad:
        raise SystemExit(f"runs not completed: {bad}")


if __name__ == "__main__":
    app.run(main)
