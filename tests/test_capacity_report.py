"""The capacity-map report's statistics on synthetic runs (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import capacity_report
from experiments.sweeping import stats


def _records():
    out = []
    for n, base in ((4, 0.9), (16, 0.6)):
        for N, gain in ((1, 0.0), (4, 0.1)):
            for seed in range(5):
                acc = base + gain * (n == 16) + 0.01 * seed + 0.002 * N * seed
                out.append({"n": n, "N": N, "seed": seed, "dir": "/nonexistent", "acc": acc,
                            "converged": not (n == 16 and N == 4 and seed == 3),
                            "stopped_at": 3000, "steps_to_90pct": 1000,
                            "wall_s": 10.0})  # fmt: skip
    return out


def test_grid_stats_pairs_seeds_against_n1_and_flags_the_cap():
    cells = capacity_report.grid_stats(_records())
    assert set(cells) == {(4, 1), (4, 4), (16, 1), (16, 4)}
    assert "gain" not in cells[(16, 1)]
    g = cells[(16, 4)]["gain"]
    d = [0.1 + 0.006 * s for s in range(5)]
    np.testing.assert_allclose(g["diffs"], d)
    mean, lo, hi = stats.t_interval(d)
    assert (g["mean"], g["lo"], g["hi"]) == pytest.approx((mean, lo, hi))
    assert g["signs"] == [5, 0, 0] and g["unconverged"]
    assert cells[(16, 4)]["unconverged"] == [3]
    assert not cells[(4, 4)]["gain"]["unconverged"]
    table = capacity_report.tables(cells, {4: dict.fromkeys((1, 2, 4, 8), 0.5),
                                        16: dict.fromkeys((1, 2, 4, 8), 0.2)}, {})  # fmt: skip
    assert f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] 5+/0-†" in table
    assert "† (1/5)" in table


def test_adaptive_table_matches_fixed_n_at_the_mean_passes():
    fixed = {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8}
    results = {"a": {"fixed": fixed, "adaptive": {0.0: {"acc": 0.7, "mean_N": 2.5}}},
               "b": {"fixed": fixed, "adaptive": {0.0: {"acc": 0.6, "mean_N": 2.0}}}}  # fmt: skip
    table = capacity_report.adaptive_table(results)
    assert "| a | 0.0 | 2.50 | 0.700 | 0.650 | +0.050 |" in table  # 0.65 interpolated
    assert "| b | 0.0 | 2.00 | 0.600 | 0.600 | +0.000 |" in table
    assert "| 0.0 | 2 | +0.025 |" in table
