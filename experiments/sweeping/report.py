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


def _ci_halves(mean: float, lo: float, hi: float, bounds=None) -> tuple[float, float]:
    # Error-bar lengths below and above the mean; 0 where no interval exists (one seed).
    # `bounds`: the values the quantity can take (an accuracy's [0, 1]): the t-interval of
    # a mean near a bound reaches past it, which no mean can.
    if math.isnan(lo):
        return 0.0, 0.0
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return max(mean - lo, 0.0), max(hi - mean, 0.0)


def _bounded(metric: str) -> bool:
    """An accuracy (acc, token_acc, ...): a fraction in [0, 1]."""
    return "acc" in metric


def _category_order(v):
    # None (e.g. window=None: the task's own), numbers in order, then anything else.
    number = isinstance(v, int | float) and not isinstance(v, bool)
    return (v is None, not number, v if number else str(v))


def _fmt_value(v) -> str:
    return grid._fmt(v) if v is not None else "None"


def plot_sweep(
    records: Sequence[dict],
    path: str | None = None,
    x_field: str = "passes",
    metric: str = "acc",
    baseline: Mapping[str, Any] | None = None,
    interval: str = "t",
):
    """The sweep's figure, also written as a PNG to `path` if given.

    Left: the metric at each value of `x_field` (as categories: N = 1, 2, 4 equally
    spaced), one series per depth (mean over seeds, error bars its 95% interval, `interval`
    as in `summary_table`; one series per combination of the other fields that vary).
    Middle: the paired difference against `baseline` (default passes=1), its 95% interval
    and every seed's difference as a dot. Right: the learning curves (train loss), one thin
    line per seed, coloured by the `x_field` value. An accuracy's axes stay within [0, 1]
    (differences within [-1, 1]).

    Returns:
      The matplotlib Figure (built without pyplot: no backend is switched, and a notebook
      shows it as the value of a cell).
    """
    from matplotlib.figure import Figure

    baseline = {"passes": 1} if baseline is None else dict(baseline)
    done = [r for r in records if r["status"] == "completed"]
    fig = Figure(figsize=(16, 4))
    ax1, ax3, ax2 = fig.subplots(1, 3)
    bounded = _bounded(metric)
    depth_keys = _depth_keys(done, metric)
    # The aggregate over depths repeats a single depth: draw it only when it adds.
    if len(depth_keys) != 1 and any(metric in r["eval"] for r in done):
        depth_keys.append(metric)
    diffs = {k: paired_diffs(done, k, baseline) for k in depth_keys}
    xval = lambda r: grid._freeze(r["overrides"].get(x_field))  # noqa: E731
    shown = grid.shown_fields([grid.point_key(r["overrides"]) for r in done], [x_field])
    rest_fields = [f for f in shown if f != x_field]
    groups: dict[tuple, list[dict]] = {}
    for r in done:
        rest = tuple((k, grid._freeze(r["overrides"].get(k))) for k in rest_fields)
        groups.setdefault(rest, []).append(r)
    cats = sorted({xval(r) for r in done if x_field in r["overrides"]}, key=_category_order)
    pos = {x: i for i, x in enumerate(cats)}
    n_series = max(len(groups) * len(depth_keys), 1)
    width = min(0.3, 0.06 * n_series)  # the series at one category sit side by side
    colors = [f"C{i % 10}" for i in range(n_series)]
    series = 0
    for rest, rs in groups.items():
        xs = [x for x in cats if any(xval(r) == x for r in rs)]
        for k in depth_keys:
            off = (series / max(n_series - 1, 1) - 0.5) * width if n_series > 1 else 0.0
            color = colors[series]
            series += 1
            means, bars, dpos, dmeans, dbars = [], [], [], [], []
            for x in xs:
                at = [r for r in rs if xval(r) == x]
                vals = [r["eval"].get(k) for r in at]
                vals = [v for v in vals if v is not None]
                st = stats.paired_summary(vals, interval)  # interval of the mean over seeds
                means.append(st.mean if vals else np.nan)
                bars.append(_ci_halves(st.mean, st.lo, st.hi, (0, 1) if bounded else None)
                            if vals else (0.0, 0.0))  # fmt: skip
                got = diffs[k].get(at[0]["point"]) if at else None
                if got is not None and len(got[1]):
                    d = stats.paired_summary(got[1], interval)
                    dpos.append(pos[x] + off)
                    dmeans.append(d.mean)
                    dbars.append(_ci_halves(d.mean, d.lo, d.hi, (-1, 1) if bounded else None))
                    ax3.scatter([pos[x] + off + 0.04] * len(got[1]), got[1], s=10, alpha=0.6,
                                color=color, zorder=3)  # fmt: skip
            label = ("all" if k == metric else k.replace(f"{metric}/", "")) + "".join(
                f" {f}={_fmt_value(v)}" for f, v in rest
            )
            ax1.errorbar([pos[x] + off for x in xs], means, yerr=np.array(bars).T, marker="o",
                         capsize=3, label=label, color=color)  # fmt: skip
            if dpos:
                ax3.errorbar(dpos, dmeans, yerr=np.array(dbars).T, marker="o", capsize=3,
                             label=label, color=color)  # fmt: skip
    for ax in (ax1, ax3):
        ax.set_xticks(range(len(cats)), [_fmt_value(x) for x in cats])
        ax.set_xlim(-0.5, max(len(cats) - 0.5, 0.5))
        ax.set_xlabel(x_field)
    ax1.set_ylabel(f"eval {metric}")
    ax1.set_title(f"{metric} vs {x_field} (95% CI)")
    if bounded:
        ax1.set_ylim(0.0, 1.0)
    if ax1.has_data():
        ax1.legend(fontsize=7)
    ax3.axhline(0.0, color="grey", lw=0.8)
    ax3.set_ylabel(f"paired difference in {metric}")
    ax3.set_title("vs " + ", ".join(f"{k}={v}" for k, v in baseline.items())
                  + " (95% CI; dots: seeds)")  # fmt: skip
    if bounded:
        lo, hi = ax3.get_ylim()
        ax3.set_ylim(max(lo, -1.0), min(hi, 1.0))
    if ax3.has_data():
        ax3.legend(fontsize=7)
    curve_color = {x: f"C{i % 10}" for i, x in enumerate(cats)}
    styles = ["-", "--", ":", "-."]
    labelled = set()
    for g, (rest, rs) in enumerate(groups.items()):
        for r in sorted(rs, key=lambda r: (_category_order(xval(r)), r["seed"])):
            curve = RunDir(r["run_dir"]).loss_curve()
            if not curve:
                continue
            key = (xval(r), rest)
            label = None
            if key not in labelled:
                labelled.add(key)
                label = f"{x_field}={_fmt_value(xval(r))}" + "".join(
                    f" {f}={_fmt_value(v)}" for f, v in rest
                )
            ax2.plot(*zip(*curve), lw=0.8, alpha=0.7, color=curve_color.get(xval(r), "grey"),
                     ls=styles[g % len(styles)], label=label)  # fmt: skip
    ax2.set_xlabel("step")
    ax2.set_ylabel("train loss")
    ax2.set_title("learning curves (one line per seed)")
    if ax2.has_data():
        ax2.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=80)
    return fig


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
