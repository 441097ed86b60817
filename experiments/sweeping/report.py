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

from experiments.sweeping import grid, stats
from experiments.sweeping.rundir import RunDir

SUMMARY_MD = "summary.md"
PLOT_FILE = "sweep.png"


def _depth_keys(records, metric: str) -> list[str]:
    keys = set()
    for r in records:
        keys.update(k for k in r["eval"] if k.startswith(f"{metric}/d="))
    return sorted(keys, key=lambda k: float(k.split("=")[1]))


def _mean_std(xs, digits: int = 3) -> str:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs, ddof=1):.{digits}f}"


DAGGER = "†"
UNCONVERGED_NOTE = (
    f"{DAGGER}: at least one run of this row (or of its paired baseline) did not converge: "
    "it hit the step cap, or ran without the stopping rule (summary.json `converged`)."
)


def _unconverged(r) -> bool:
    return r.get("converged") is not True


def _by_point(records) -> dict[str, list[dict]]:
    points: dict[str, list[dict]] = {}
    for r in records:
        points.setdefault(r["point"], []).append(r)
    return points


def paired_diffs(
    records: Sequence[dict], metric_key: str, baseline: Mapping[str, Any]
) -> dict[str, tuple[list[int], np.ndarray, bool]]:
    """Per point that is not its own baseline: (seeds, per-seed differences of
    `eval[metric_key]` against the paired baseline run, whether any run of the pairs is
    unconverged). Seeds without a baseline run or a value are left out."""
    done = [r for r in records if r["status"] == "completed"]
    by_key = {(grid.point_key(r["overrides"]), r["seed"]): r for r in done}
    out = {}
    for name, rs in _by_point(done).items():
        base_key = grid.baseline_of(rs[0]["overrides"], baseline)
        if base_key == grid.point_key(rs[0]["overrides"]):
            continue
        seeds, treated, base, flag = [], [], [], False
        for r in sorted(rs, key=lambda r: r["seed"]):
            b = by_key.get((base_key, r["seed"]))
            if b is None or r["eval"].get(metric_key) is None or b["eval"].get(metric_key) is None:
                continue
            seeds.append(r["seed"])
            treated.append(r["eval"][metric_key])
            base.append(b["eval"][metric_key])
            flag = flag or _unconverged(r) or _unconverged(b)
        out[name] = (seeds, stats.paired_differences(treated, base), flag)
    return out


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
    done = [r for r in records if r["status"] == "completed"]
    depth_keys = _depth_keys(done, metric) + (
        [metric] if any(metric in r["eval"] for r in done) else []
    )
    points = _by_point(done)
    head = ["point", "seeds"] + [
        k.replace(f"{metric}/", "") if "/" in k else "all" for k in depth_keys
    ]
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
        cells = [_mean_std([r["eval"].get(k) for r in rs]) for k in depth_keys]
        cells.append(_mean_std([r.get("steps_to_90pct") for r in rs], digits=0))
        n_conv = sum(not _unconverged(r) for r in rs)
        cells.append(f"{n_conv}/{len(rs)}")
        if timed:
            cells.append(f"{np.mean([r.get('train_s') or np.nan for r in rs]):.0f}")
        flag = DAGGER if n_conv < len(rs) else ""
        any_flag = any_flag or bool(flag)
        lines.append(f"| {name}{flag} | {len(rs)} | " + " | ".join(cells) + " |")
    diffs = {k: paired_diffs(done, k, baseline) for k in depth_keys}
    names = [n for n in points if any(n in diffs[k] for k in depth_keys)]
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
            got = [diffs[k].get(name) for k in depth_keys]
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


def verdict_lines(
    records: Sequence[dict],
    metric: str = "acc",
    baseline: Mapping[str, Any] | None = None,
    interval: str = "t",
    confirm_seeds: Sequence[int] = (),
) -> list[str]:
    """One line per compared point: its paired gain on `metric` (all depths) against the
    baseline, the 95% interval and sign counts, on the seeds that chose the configuration
    and, separately, on the confirmation seeds (`confirm_seeds`, decided before they ran),
    and what that shows: "helps" only if the interval lies above 0 on both sets, "hurts"
    only if below 0 on both, otherwise "no effect shown" (so a sweep without confirmation
    seeds never says more than that; its one-set reading is given beside it). How many
    pairs converged is given too (an unconverged pair makes the verdict provisional)."""
    baseline = {"passes": 1} if baseline is None else dict(baseline)
    base_desc = ", ".join(f"{k}={v}" for k, v in baseline.items())
    done = [r for r in records if r["status"] == "completed"]
    by_key = {(grid.point_key(r["overrides"]), r["seed"]): r for r in done}
    confirm = {int(x) for x in confirm_seeds}
    lines = []
    for name, (seeds, d, flag) in paired_diffs(records, metric, baseline).items():
        chosen = [(s, x) for s, x in zip(seeds, d) if s not in confirm]
        confirming = [(s, x) for s, x in zip(seeds, d) if s in confirm]
        if len(chosen) < 2:
            continue
        ps = stats.paired_summary([x for _, x in chosen], interval)
        treated_key = next(grid.point_key(r["overrides"]) for r in done if r["point"] == name)
        base_key = grid.baseline_of(dict(treated_key), baseline)
        both = sum(
            not _unconverged(by_key[(treated_key, s)]) and not _unconverged(by_key[(base_key, s)])
            for s in seeds
        )
        caveat = "" if not flag else "; provisional: some runs hit the step cap"
        text = (f"{ps.mean:+.3f} [{ps.lo:+.3f}, {ps.hi:+.3f}], {ps.positive}+/{ps.negative}- "
                f"over {ps.n} seeds")  # fmt: skip
        if len(confirming) >= 2:
            pc = stats.paired_summary([x for _, x in confirming], interval)
            text += (f"; confirmation seeds {','.join(str(s) for s, _ in confirming)}: "
                     f"{pc.mean:+.3f} [{pc.lo:+.3f}, {pc.hi:+.3f}], "
                     f"{pc.positive}+/{pc.negative}-")  # fmt: skip
            word, note = _word(ps, pc), ""
        else:
            word, alone = "no effect shown", _word(ps, ps)
            # The one-set reading is shown, never taken for the verdict.
            note = "" if alone == word else f"these seeds alone: {alone}, unconfirmed; "
        lines.append(
            f"Verdict ({metric}, {name} vs {base_desc}): {text}: "
            f"**{word}** ({note}{both}/{len(seeds)} pairs both converged{caveat})."
        )
    return lines


def _word(a: stats.PairedSummary, b: stats.PairedSummary) -> str:
    if a.lo > 0 and b.lo > 0:
        return "helps"
    if a.hi < 0 and b.hi < 0:
        return "hurts"
    return "no effect shown"


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


def _ci_halves(mean: float, lo: float, hi: float) -> tuple[float, float]:
    # Error-bar lengths below and above the mean; 0 where no interval exists (one seed).
    if math.isnan(lo):
        return 0.0, 0.0
    return mean - lo, hi - mean


def plot_sweep(
    records: Sequence[dict],
    path: str,
    x_field: str = "passes",
    metric: str = "acc",
    baseline: Mapping[str, Any] | None = None,
    interval: str = "t",
) -> str:
    """PNG: left, the metric vs `x_field` per depth (mean over seeds, error bars the 95%
    interval of the mean, `interval` as in `summary_table`; other fields fixed to each
    distinct combination); middle, the paired difference against `baseline` (default
    passes=1) with its 95% interval; right, learning curves (train loss) per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = {"passes": 1} if baseline is None else dict(baseline)
    done = [r for r in records if r["status"] == "completed"]
    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(16, 4))
    depth_keys = _depth_keys(done, metric) + (
        [metric] if any(metric in r["eval"] for r in done) else []
    )
    diffs = {k: paired_diffs(done, k, baseline) for k in depth_keys}
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
            means, bars, dmeans, dbars, dxs = [], [], [], [], []
            for x in xs:
                at = [r for r in rs if r["overrides"].get(x_field) == x]
                vals = [r["eval"].get(k) for r in at]
                vals = [v for v in vals if v is not None]
                s = stats.paired_summary(vals, interval)  # interval of the mean over seeds
                means.append(s.mean if vals else np.nan)
                bars.append(_ci_halves(s.mean, s.lo, s.hi) if vals else (0.0, 0.0))
                got = diffs[k].get(at[0]["point"]) if at else None
                if got is not None and len(got[1]):
                    d = stats.paired_summary(got[1], interval)
                    dxs.append(x)
                    dmeans.append(d.mean)
                    dbars.append(_ci_halves(d.mean, d.lo, d.hi))
            label = ("all" if k == metric else k.replace(f"{metric}/", "")) + (
                " " + ",".join(f"{a}={b}" for a, b in rest) if rest else ""
            )
            ax1.errorbar(xs, means, yerr=np.array(bars).T, marker="o", capsize=3, label=label)
            if dxs:
                ax3.errorbar(dxs, dmeans, yerr=np.array(dbars).T, marker="o", capsize=3,
                             label=label)  # fmt: skip
    ax1.set_xlabel(x_field)
    ax1.set_ylabel(f"eval {metric}")
    ax1.set_title(f"{metric} vs {x_field} (95% CI)")
    ax1.legend(fontsize=7)
    ax3.axhline(0.0, color="grey", lw=0.8)
    ax3.set_xlabel(x_field)
    ax3.set_ylabel(f"paired difference in {metric}")
    ax3.set_title("vs " + ", ".join(f"{k}={v}" for k, v in baseline.items()) + " (95% CI)")
    if ax3.has_data():
        ax3.legend(fontsize=7)
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

    `sweep_config`: the sweep file's ConfigDict (baseline, metric, x_field, frontier,
    interval).
    """
    s = sweep_config
    baseline = grid.plain(s.get("baseline", {"passes": 1}))
    metric = s.get("metric", "acc")
    interval = s.get("interval", "t")
    table = summary_table(records, metric=metric, baseline=baseline, interval=interval)
    verdicts = verdict_lines(records, metric=metric, baseline=baseline, interval=interval,
                             confirm_seeds=tuple(grid.plain(s.get("confirm_seeds", ()))))
    if verdicts:
        table = "\n".join(verdicts) + "\n\n" + table
    cross = eval_n_table(records, metric=metric)
    if cross is not None:
        table += "\n\n" + cross
    if s.get("frontier") is not None:
        table += "\n\n" + frontier_table(records, s.frontier, metric=metric)
    plot_sweep(records, os.path.join(workdir, PLOT_FILE), x_field=s.get("x_field", "passes"),
               metric=metric, baseline=baseline, interval=interval)  # fmt: skip
    axes, fixed = grid.axes_and_fixed(s)
    with open(os.path.join(workdir, SUMMARY_MD), "w") as f:
        f.write(
            f"# Sweep {s.config}:{s.get('config_arg', '')}\n\naxes: {axes}\nfixed: {fixed}\n"
            f"seeds: {list(grid.plain(s.seeds))}\n\n{table}\n\n![sweep]({PLOT_FILE})\n"
        )
    return table
