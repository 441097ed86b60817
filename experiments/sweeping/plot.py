"""The sweep's figure: the metric per x-field value and depth, the paired difference
against the baseline, and the learning curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.sweeping import grid, stats
from experiments.sweeping.records import completed, depth_keys
from experiments.sweeping.rundir import RunDir
from experiments.sweeping.verdict import paired_diffs


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
    done = completed(records)
    fig = Figure(figsize=(16, 4))
    ax1, ax3, ax2 = fig.subplots(1, 3)
    bounded = _bounded(metric)
    keys = depth_keys(done, metric)
    # The aggregate over depths repeats a single depth: draw it only when it adds.
    if len(keys) != 1 and any(metric in r["eval"] for r in done):
        keys.append(metric)
    diffs = {k: paired_diffs(done, k, baseline) for k in keys}
    xval = lambda r: grid._freeze(r["overrides"].get(x_field))  # noqa: E731
    shown = grid.shown_fields([grid.point_key(r["overrides"]) for r in done], [x_field])
    rest_fields = [f for f in shown if f != x_field]
    groups: dict[tuple, list[dict]] = {}
    for r in done:
        rest = tuple((k, grid._freeze(r["overrides"].get(k))) for k in rest_fields)
        groups.setdefault(rest, []).append(r)
    cats = sorted({xval(r) for r in done if x_field in r["overrides"]}, key=_category_order)
    pos = {x: i for i, x in enumerate(cats)}
    n_series = max(len(groups) * len(keys), 1)
    width = min(0.3, 0.06 * n_series)  # the series at one category sit side by side
    colors = [f"C{i % 10}" for i in range(n_series)]
    series = 0
    for rest, rs in groups.items():
        xs = [x for x in cats if any(xval(r) == x for r in rs)]
        for k in keys:
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
