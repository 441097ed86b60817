"""Paired statistics over seeds: the difference against the baseline, its 95% interval,
and how many seeds' differences have each sign.

    d = paired_differences(treated, baseline)      # one number per seed
    paired_summary(d).fmt()                        # "+0.120 [+0.010, +0.230] 4+ 1- 0="

Two intervals for the mean paired difference:
  * "t": the paired t-interval, mean ± t_{n-1, 1-(1-level)/2} · sd / sqrt(n) (the
    quantile from scipy, which jax already depends on). Exact if the differences are
    normal; the default, because with 5 seeds a bootstrap has only 126 distinct resamples.
  * "bootstrap": the percentile bootstrap of the mean over seeds (resampling seeds with
    replacement), seeded so that a report is reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _scipy_stats

METHODS = ("t", "bootstrap")
LEVEL = 0.95


def paired_differences(
    treated: Sequence[float | None], baseline: Sequence[float | None]
) -> np.ndarray:
    """treated[i] - baseline[i] for every seed i where both are finite numbers."""
    if len(treated) != len(baseline):
        raise ValueError(f"{len(treated)} treated values but {len(baseline)} baseline values")
    out = [
        float(a) - float(b)
        for a, b in zip(treated, baseline)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    return np.asarray(out, np.float64)


def _as_differences(d) -> tuple[np.ndarray, float]:
    """`d` as float64 and its mean (NaN for no differences)."""
    d = np.asarray(d, np.float64)
    return d, float(d.mean()) if d.size else math.nan


def t_interval(d: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """The paired t-interval of the mean of `d`.

    Args:
      d: the per-seed differences; level: the coverage (0.95).

    Returns:
      (mean, lo, hi); lo = hi = NaN with fewer than 2 differences (no spread to judge).
    """
    d, mean = _as_differences(d)
    if d.size < 2:
        return mean, math.nan, math.nan
    n = d.size
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def bootstrap_interval(
    d: Sequence[float], level: float = LEVEL, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """The percentile-bootstrap interval of the mean of `d` (seeds resampled with
    replacement, `resamples` times, from `np.random.default_rng(seed)`).

    Returns:
      (mean, lo, hi); lo = hi = NaN with fewer than 2 differences.
    """
    d, mean = _as_differences(d)
    if d.size < 2:
        return mean, math.nan, math.nan
    n = d.size
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return mean, float(lo), float(hi)


def sign_counts(d: Sequence[float], tol: float = 0.0) -> tuple[int, int, int]:
    """(how many > tol, how many < -tol, how many within ±tol) of the differences."""
    d = np.asarray(d, np.float64)
    return int(np.sum(d > tol)), int(np.sum(d < -tol)), int(np.sum(np.abs(d) <= tol))


@dataclasses.dataclass(frozen=True)
class PairedSummary:
    """The mean paired difference over n seeds, its interval and its sign counts."""

    n: int
    mean: float
    lo: float
    hi: float
    positive: int
    negative: int
    zero: int
    method: str
    level: float = LEVEL

    def fmt(self) -> str:
        """Markdown cell: "+0.120 [+0.010, +0.230] 4+ 1- 0=" ("n/a" for no seeds)."""
        if self.n == 0:
            return "n/a"
        ci = "" if math.isnan(self.lo) else f" [{self.lo:+.3f}, {self.hi:+.3f}]"
        return f"{self.mean:+.3f}{ci} {self.positive}+ {self.negative}- {self.zero}="


def paired_summary(d: Sequence[float], method: str = "t", level: float = LEVEL) -> PairedSummary:
    """`t_interval` or `bootstrap_interval` of `d`, with `sign_counts`.

    Raises:
      ValueError: an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"interval method must be one of {METHODS}, got {method!r}")
    d = np.asarray(d, np.float64)
    fn = t_interval if method == "t" else bootstrap_interval
    mean, lo, hi = fn(d, level)
    pos, neg, zero = sign_counts(d)
    return PairedSummary(d.size, mean, lo, hi, pos, neg, zero, method, level)


def describe_method(method: str, level: float = LEVEL) -> str:
    """One line saying which interval a table shows."""
    if method == "t":
        return f"{level:.0%} paired t-interval over seeds"
    return f"{level:.0%} percentile bootstrap over seeds (10,000 resamples, rng seed 0)"


def paired_failures(treated: Sequence[bool], baseline: Sequence[bool]) -> dict:
    """Exact McNemar test on paired yes/no outcomes (e.g. "stuck on the plateau"), one pair
    per seed (and load): only the discordant pairs carry information, and under "no
    difference" each is equally likely to go either way (a two-sided binomial test,
    scipy's `binomtest`, on the treated-only count).

    Returns:
      {"pairs", "treated_only", "baseline_only", "both", "p"} (p = 1.0 with no discordant
      pair).
    """
    if len(treated) != len(baseline):
        raise ValueError(f"{len(treated)} treated outcomes but {len(baseline)} baseline ones")
    t, b = np.asarray(treated, bool), np.asarray(baseline, bool)
    t_only, b_only = int(np.sum(t & ~b)), int(np.sum(b & ~t))
    n = t_only + b_only
    p = float(_scipy_stats.binomtest(t_only, n, 0.5).pvalue) if n else 1.0
    return {"pairs": int(t.size), "treated_only": t_only, "baseline_only": b_only,
            "both": int(np.sum(t & b)), "p": p}  # fmt: skip
