"""A sweep's markdown tables: per point and depth the metric over seeds, the paired
difference against the baseline, the metric at other eval N, every seed's values at each
depth, the depth frontier."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.sweeping import stats
from experiments.sweeping.records import by_point, completed, depth_keys, is_unconverged
from experiments.sweeping.verdict import paired_diffs

DAGGER = "†"
UNCONVERGED_NOTE = (
    f"{DAGGER}: at least one run of this row (or of its paired baseline) did not converge: "
    "it hit the step cap, or ran without the stopping rule (summary.json `converged`)."
)


def mean_std(xs, digits: int = 3) -> str:
    """`mean ± std` over the values that exist (None and NaN left out): the one value if
    there is one, "n/a" if none."""
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs, ddof=1):.{digits}f}"


def summary_table(
    records: Sequence[dict],
    metric: str = "acc",
    baseline: Mapping[str, Any] | None = None,
    interval: str = "t",
) -> str:
    """Markdown: per point, mean ± std over seeds per depth, the steps to 90% of the final
    eval metric and how many runs converged; then the paired difference against the
    baseline point (default: the same point with passes=1) with its 95% interval
    (`interval`: "t" or "bootstrap", `stats.py`) and sign counts; then every seed's
    difference. Rows with an unconverged run are marked with a dagger."""
    baseline = {"passes": 1} if baseline is None else dict(baseline)
    done = completed(records)
    keys = depth_keys(done, metric) + ([metric] if any(metric in r["eval"] for r in done) else [])
    points = by_point(done)
    head = ["point", "seeds"] + [k.replace(f"{metric}/", "") if "/" in k else "all" for k in keys]
    extra = ["steps to 90%", "converged"]
    timed = any(r.get("train_s") for r in done)
    if timed:  # the training loop's own time per run (no compile/eval), mean over seeds
        extra.append("train s")
    cols = head + extra
    lines = [
        f"**{metric}** (mean ± std over seeds)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    any_flag = False
    for name, rs in points.items():
        cells = [mean_std([r["eval"].get(k) for r in rs]) for k in keys]
        cells.append(mean_std([r.get("steps_to_90pct") for r in rs], digits=0))
        n_conv = sum(not is_unconverged(r) for r in rs)
        cells.append(f"{n_conv}/{len(rs)}")
        if timed:
            cells.append(f"{np.mean([r.get('train_s') or np.nan for r in rs]):.0f}")
        flag = DAGGER if n_conv < len(rs) else ""
        any_flag = any_flag or bool(flag)
        lines.append(f"| {name}{flag} | {len(rs)} | " + " | ".join(cells) + " |")
    diffs = {k: paired_diffs(done, k, baseline) for k in keys}
    names = [n for n in points if any(n in diffs[k] for k in keys)]
    if names:
        base_desc = ", ".join(f"{k}={v}" for k, v in baseline.items())
        lines += [
            "",
            f"**{metric}: paired difference against the baseline ({base_desc})**: mean "
            f"[{stats.describe_method(interval)}], then how many seeds' differences are "
            "> 0, < 0, = 0",
            "",
            "| point | seeds | " + " | ".join(head[2:]) + " |",
            "|" + "---|" * len(head),
        ]
        per_seed = []
        for name in names:
            got = [diffs[k].get(name) for k in keys]
            flag = DAGGER if any(g is not None and g[2] for g in got) else ""
            any_flag = any_flag or bool(flag)
            n = max((len(g[0]) for g in got if g is not None), default=0)
            cells = [
                "n/a" if g is None else stats.paired_summary(g[1], interval).fmt() for g in got
            ]
            lines.append(f"| {name}{flag} | {n} | " + " | ".join(cells) + " |")
            seeds = next((g[0] for g in got if g is not None and g[0]), [])
            raw = [
                " ".join(f"{d:+.3f}" for d in g[1]) if g is not None and len(g[1]) else "n/a"
                for g in got
            ]
            per_seed.append(f"| {name}{flag} | {' '.join(map(str, seeds))} | " + " | ".join(raw))
        lines += [
            "",
            f"**{metric}: per-seed difference against the paired baseline ({base_desc})**",
            "",
            "| point | seeds | " + " | ".join(head[2:]) + " |",
            "|" + "---|" * len(head),
        ]
        lines += [ln + " |" for ln in per_seed]
    if any_flag:
        lines += ["", UNCONVERGED_NOTE]
    return "\n".join(lines)


def eval_n_table(records: Sequence[dict], metric: str = "acc") -> str | None:
    """Markdown: per point, `metric` (all depths) when evaluated at each extra N of the
    runs' `eval_passes` (summary keys `N{M}/{metric}`); None if the runs have none."""
    done = completed(records)
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
    for name, rs in by_point(done).items():
        cells = [mean_std([r["eval"].get(f"N{n}/{metric}") for r in rs]) for n in ns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def depth_family(metric: str) -> str:
    """The metric whose per-depth keys `metric` belongs to: "acc/d=2" -> "acc"."""
    return metric.split("/d=")[0]


def _frontier(record: dict, keys: Sequence[str], threshold: float) -> float:
    """The largest depth d such that every depth up to d scores >= threshold (0: none)."""
    front = 0.0
    for k in keys:
        v = record["eval"].get(k)
        if v is None or v < threshold:
            break
        front = float(k.split("=")[1])
    return front


def per_seed_table(records: Sequence[dict], metric: str = "acc", threshold=None) -> str:
    """Markdown: one row per run (point, seed): `metric` at each depth and over all, the
    step it stopped at and why (a dagger: it did not converge), its training seconds, and,
    with `threshold`, its depth frontier. The table a results document quotes per seed."""
    done = completed(records)
    keys = depth_keys(done, metric)
    head = ["point", "seed"] + [k.replace(f"{metric}/", "") for k in keys] + ["all", "stopped"]
    head += ["train s"] + (["frontier"] if threshold is not None else [])
    lines = [
        f"**{metric} per seed** (each run's final eval)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    any_flag = False
    for name, rs in by_point(done).items():
        for r in sorted(rs, key=lambda r: r["seed"]):
            stop = r.get("stopped_at")
            flag = DAGGER if is_unconverged(r) else ""
            any_flag = any_flag or bool(flag)
            stop = f"{'n/a' if stop is None else stop}{flag}"
            cells = [fmt(r["eval"].get(k)) for k in keys] + [fmt(r["eval"].get(metric)), stop]
            cells.append("n/a" if r.get("train_s") is None else f"{r['train_s']:.0f}")
            if threshold is not None:
                cells.append(f"{_frontier(r, keys, threshold):g}")
            lines.append(f"| {name} | {r['seed']} | " + " | ".join(cells) + " |")
    if any_flag:
        lines += ["", UNCONVERGED_NOTE]
    return "\n".join(lines)


def frontier_table(records: Sequence[dict], threshold: float, metric: str = "acc") -> str:
    """Markdown: per point and seed, the depth frontier = the largest depth d such that
    every depth up to d scores `metric` >= threshold (0 if even the shallowest does not)."""
    done = completed(records)
    keys = depth_keys(done, metric)
    lines = [
        f"**depth frontier** (largest depth with {metric} >= {threshold:g} at it and every "
        "shallower depth; per seed)",
        "",
        "| point | per seed | mean |",
        "|---|---|---|",
    ]
    for name, rs in by_point(done).items():
        fronts = []
        for r in sorted(rs, key=lambda r: r["seed"]):
            fronts.append(_frontier(r, keys, threshold))
        per_seed = " ".join(f"{f:g}" for f in fronts)
        lines.append(f"| {name} | {per_seed} | {np.mean(fronts):.2f} |")
    return "\n".join(lines)
