"""A sweep's report: paired-seed markdown tables and plots from its results records.

A record (`runner.collect_results`) is one run: its point, overrides, seed, status, final
`eval` metrics (summary.json) and run directory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.sweeping import grid
from experiments.sweeping.rundir import RunDir

SUMMARY_MD = "summary.md"
PLOT_FILE = "sweep.png"


def _depth_keys(records, metric: str) -> list[str]:
    keys = set()
    for r in records:
        keys.update(k for k in r["eval"] if k.startswith(f"{metric}/d="))
    return sorted(keys, key=lambda k: float(k.split("=")[1]))


def _mean_std(xs) -> str:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1):.3f}"


def summary_table(
    records: Sequence[dict], metric: str = "acc", baseline: Mapping[str, Any] | None = None
) -> str:
    """Markdown: per point, mean ± std over seeds per depth; then per-seed differences
    against the paired baseline point (default: the same point with passes=1)."""
    baseline = {"passes": 1} if baseline is None else dict(baseline)
    done = [r for r in records if r["status"] == "completed"]
    depth_keys = _depth_keys(done, metric) + (
        [metric] if any(metric in r["eval"] for r in done) else []
    )
    points: dict[str, list[dict]] = {}
    for r in done:
        points.setdefault(r["point"], []).append(r)
    head = ["point", "seeds"] + [
        k.replace(f"{metric}/", "") if "/" in k else "all" for k in depth_keys
    ]
    timed = any(r.get("train_s") for r in done)
    lines = [
        f"**{metric}** (mean ± std over seeds)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    if timed:  # the training loop's own time per run (no compile/eval), mean over seeds
        lines[2] = lines[2][:-1] + "| train s |"
        lines[3] += "---|"
    for name, rs in points.items():
        cells = [_mean_std([r["eval"].get(k) for r in rs]) for k in depth_keys]
        if timed:
            cells.append(f"{np.mean([r.get('train_s') or np.nan for r in rs]):.0f}")
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    by_key = {(grid.point_key(r["overrides"]), r["seed"]): r for r in done}
    diff_lines = []
    for name, rs in points.items():
        ov = rs[0]["overrides"]
        base_key = grid.baseline_of(ov, baseline)
        if base_key == grid.point_key(ov):
            continue
        cells = []
        for k in depth_keys:
            diffs = []
            for r in sorted(rs, key=lambda r: r["seed"]):
                b = by_key.get((base_key, r["seed"]))
                if (
                    b is not None
                    and k in b["eval"]
                    and r["eval"].get(k) is not None
                    and b["eval"][k] is not None
                ):
                    diffs.append(r["eval"][k] - b["eval"][k])
            cells.append(" ".join(f"{d:+.3f}" for d in diffs) if diffs else "n/a")
        diff_lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if diff_lines:
        base_desc = ", ".join(f"{k}={v}" for k, v in baseline.items())
        lines += [
            "",
            f"**{metric}: per-seed difference against the paired baseline ({base_desc})**",
            "",
            "| point | " + " | ".join(head[2:]) + " |",
            "|" + "---|" * (len(head) - 1),
        ]
        lines += diff_lines
    return "\n".join(lines)


def eval_n_table(records: Sequence[dict], metric: str = "acc") -> str | None:
    """Markdown: per point, `metric` (all depths) when evaluated at each extra N of the
    runs' `eval_passes` (summary keys `N{M}/{metric}`); None if the runs have none."""
    done = [r for r in records if r["status"] == "completed"]
    ns = sorted(
        {int(k[1:].split("/")[0]) for r in done for k in r["eval"] if k.endswith(f"/{metric}")
         and k.startswith("N") and k.count("/") == 1}
    )  # fmt: skip
    if not ns:
        return None
    lines = [
        f"**{metric} when evaluated at N** (rows: the point as trained; mean ± std over seeds)",
        "",
        "| point | " + " | ".join(f"eval N={n}" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
    ]
    points: dict[str, list[dict]] = {}
    for r in done:
        points.setdefault(r["point"], []).append(r)
    for name, rs in points.items():
        cells = [_mean_std([r["eval"].get(f"N{n}/{metric}") for r in rs]) for n in ns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def frontier_table(records: Sequence[dict], threshold: float, metric: str = "acc") -> str:
    """Markdown: per point and seed, the depth frontier = the largest depth d such that
    every depth up to d scores `metric` >= threshold (0 if even the shallowest does not)."""
    done = [r for r in records if r["status"] == "completed"]
    keys = _depth_keys(done, metric)
    lines = [
        f"**depth frontier** (largest depth with {metric} >= {threshold:g} at it and every "
        "shallower depth; per seed)",
        "",
        "| point | per seed | mean |",
        "|---|---|---|",
    ]
    points: dict[str, list[dict]] = {}
    for r in done:
        points.setdefault(r["point"], []).append(r)
    for name, rs in points.items():
        fronts = []
        for r in sorted(rs, key=lambda r: r["seed"]):
            front = 0.0
            for k in keys:
                v = r["eval"].get(k)
                if v is None or v < threshold:
                    break
                front = float(k.split("=")[1])
            fronts.append(front)
        per_seed = " ".join(f"{f:g}" for f in fronts)
        lines.append(f"| {name} | {per_seed} | {np.mean(fronts):.2f} |")
    return "\n".join(lines)


def plot_sweep(
    records: Sequence[dict], path: str, x_field: str = "passes", metric: str = "acc"
) -> str:
    """PNG: left, the metric vs `x_field` per depth (mean ± std over seeds, other fields
    fixed to each distinct combination); right, learning curves (train loss) per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r["status"] == "completed"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    depth_keys = _depth_keys(done, metric)
    groups: dict[tuple, list[dict]] = {}
    for r in done:
        rest = tuple(sorted((k, str(v)) for k, v in r["overrides"].items() if k != x_field))
        groups.setdefault(rest, []).append(r)
    for rest, rs in groups.items():
        xs = sorted(
            {r["overrides"].get(x_field) for r in rs if r["overrides"].get(x_field) is not None}
        )
        if not xs:
            continue
        for k in depth_keys:
            means, stds = [], []
            for x in xs:
                vals = [r["eval"].get(k) for r in rs if r["overrides"].get(x_field) == x]
                vals = [v for v in vals if v is not None]
                means.append(np.mean(vals) if vals else np.nan)
                stds.append(np.std(vals) if len(vals) > 1 else 0.0)
            label = k.replace(f"{metric}/", "") + (
                " " + ",".join(f"{a}={b}" for a, b in rest) if rest else ""
            )
            ax1.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
    ax1.set_xlabel(x_field)
    ax1.set_ylabel(f"eval {metric}")
    ax1.set_title(f"{metric} vs {x_field} per depth")
    ax1.legend(fontsize=7)
    for r in done:
        curve = RunDir(r["run_dir"]).loss_curve()
        if curve:
            ax2.plot(*zip(*curve), alpha=0.7, label=f"{r['point']} s{r['seed']}")
    ax2.set_xlabel("step")
    ax2.set_ylabel("train loss")
    ax2.set_title("learning curves")
    ax2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_report(workdir: str, sweep_config, records: Sequence[dict]) -> str:
    """`<workdir>/summary.md` (the tables, the plot) and `sweep.png`; returns the tables.

    `sweep_config`: the sweep file's ConfigDict (baseline, metric, x_field, frontier).
    """
    s = sweep_config
    baseline = grid.plain(s.get("baseline", {"passes": 1}))
    metric = s.get("metric", "acc")
    table = summary_table(records, metric=metric, baseline=baseline)
    cross = eval_n_table(records, metric=metric)
    if cross is not None:
        table += "\n\n" + cross
    if s.get("frontier") is not None:
        table += "\n\n" + frontier_table(records, s.frontier, metric=metric)
    plot_sweep(records, os.path.join(workdir, PLOT_FILE), x_field=s.get("x_field", "passes"),
               metric=metric)  # fmt: skip
    axes, fixed = grid.axes_and_fixed(s)
    with open(os.path.join(workdir, SUMMARY_MD), "w") as f:
        f.write(
            f"# Sweep {s.config}:{s.get('config_arg', '')}\n\naxes: {axes}\nfixed: {fixed}\n"
            f"seeds: {list(grid.plain(s.seeds))}\n\n{table}\n\n![sweep]({PLOT_FILE})\n"
        )
    return table
