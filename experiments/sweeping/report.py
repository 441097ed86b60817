"""A sweep's report: `summary.md` (paired-seed markdown tables and verdicts) and the
figure `sweep.png`, from its results records.

A record (`runner.collect_results`) is one run: its point, overrides, seed, status, final
`eval` metrics (summary.json) and run directory. The tables live in `tables.py`, the
comparisons and verdicts in `verdict.py`, the figure in `plot.py`; their public names are
importable from here too, the one module a notebook needs for a sweep's results.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from experiments.sweeping import grid
from experiments.sweeping.plot import plot_sweep
from experiments.sweeping.tables import (
    DAGGER,
    UNCONVERGED_NOTE,
    depth_family,
    eval_n_table,
    frontier_table,
    per_seed_table,
    summary_table,
)
from experiments.sweeping.verdict import paired_diffs, verdict_lines
from sleep_consolidation.training import machine

__all__ = [
    "DAGGER",
    "PLOT_FILE",
    "SUMMARY_MD",
    "UNCONVERGED_NOTE",
    "eval_n_table",
    "frontier_table",
    "machines_line",
    "paired_diffs",
    "per_seed_table",
    "plot_sweep",
    "summary_table",
    "verdict_lines",
    "write_report",
]

SUMMARY_MD = "summary.md"
PLOT_FILE = "sweep.png"


def write_report(workdir: str, sweep_config, records: Sequence[dict]) -> str:
    """`<workdir>/summary.md` (the tables, the plot) and `sweep.png`; returns the tables.

    `sweep_config`: the sweep file's ConfigDict (baseline, metric, x_field, frontier,
    interval).
    """
    s = sweep_config
    baseline = grid.plain(s.get("baseline", {"passes": 1}))
    metric = s.get("metric", "acc")
    interval = s.get("interval", "t")
    table = summary_table(records, metric=metric, baseline=baseline, interval=interval)
    verdicts = verdict_lines(
        records,
        metric=metric,
        baseline=baseline,
        interval=interval,
        confirm_seeds=tuple(grid.plain(s.get("confirm_seeds", ()))),
    )
    if verdicts:
        table = "\n".join(verdicts) + "\n\n" + table
    cross = eval_n_table(records, metric=metric)
    if cross is not None:
        table += "\n\n" + cross
    if s.get("frontier") is not None:  # a depth study: every seed's depths, then frontiers
        # over the metric's depths: a verdict read at one depth (acc/d=2) still tabulates
        # acc at every depth, and the frontier runs through them.
        family = depth_family(metric)
        table += "\n\n" + per_seed_table(records, metric=family, threshold=s.frontier)
        table += "\n\n" + frontier_table(records, s.frontier, metric=family)
    plot_sweep(records, os.path.join(workdir, PLOT_FILE), x_field=s.get("x_field", "passes"),
               metric=metric, baseline=baseline, interval=interval)  # fmt: skip
    axes, fixed = grid.axes_and_fixed(s)
    with open(os.path.join(workdir, SUMMARY_MD), "w") as f:
        f.write(
            f"# Sweep {s.config}:{s.get('config_arg', '')}\n\naxes: {axes}\nfixed: {fixed}\n"
            f"seeds: {list(grid.plain(s.seeds))}\n{machines_line(records)}\n\n{table}\n\n"
            f"![sweep]({PLOT_FILE})\n"
        )
    return table


def machines_line(records: Sequence[dict]) -> str:
    """`machines: ...`: each machine the runs were trained on (`machine.name`) with its
    number of runs; a run trained on machines that may compute differently (resumed
    elsewhere) is named, since its numbers are those of no single machine."""
    counts: dict[str, int] = {}
    mixed = []
    for r in records:
        ms = r.get("machines") or [None]
        for name in dict.fromkeys(machine.name(m) for m in ms):
            counts[name] = counts.get(name, 0) + 1
        if machine.changed([m for m in ms if m]):
            mixed.append(os.path.basename(r.get("run_dir") or "?"))
    line = "machines: " + "; ".join(f"{k}: {v} run(s)" for k, v in counts.items())
    if mixed:
        line += f". Trained on more than one machine (resumed elsewhere): {', '.join(mixed)}"
    return line
