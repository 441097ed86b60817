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


def test_an_extended_map_keeps_earlier_records_and_lets_runs_on_disk_win(tmp_path):
    import json

    earlier = _records()
    path = tmp_path / "capacity_map.json"
    ref = {"16": {"1": {"acc": 0.4, "cos": 0.6}, "8": {"acc": 0.7, "cos": 0.9}}}
    adaptive = {"n=16,N=4,seed=0": {"fixed": {"1": 0.5, "2": 0.6},
                                    "adaptive": {"0.0": {"acc": 0.55, "mean_N": 1.5}}}}  # fmt: skip
    path.write_text(json.dumps({"records": earlier, "trained_reference": ref,
                                "adaptive": adaptive}))  # fmt: skip
    prev = capacity_report.load_previous([str(path)])
    assert prev["trained_reference"] == {16: {1: {"acc": 0.4, "cos": 0.6},
                                              8: {"acc": 0.7, "cos": 0.9}}}  # fmt: skip
    a = prev["adaptive"]["n=16,N=4,seed=0"]
    assert a["fixed"] == {1: 0.5, 2: 0.6} and a["adaptive"] == {0.0: {"acc": 0.55, "mean_N": 1.5}}
    assert "| n=16,N=4,seed=0 | 0.0 | 1.50 | 0.550 | 0.550 | +0.000 |" in (
        capacity_report.adaptive_table(prev["adaptive"])
    )
    # a new run of an earlier point replaces its record; a new point joins the map
    newer = {**earlier[0], "acc": 0.123, "dir": "/new"}
    extra = {**earlier[0], "n": 32, "dir": "/new32"}
    merged = capacity_report.merge_records([newer, extra], prev["records"])
    assert len(merged) == len(earlier) + 1
    by = {(r["n"], r["N"], r["seed"]): r for r in merged}
    assert by[(4, 1, 0)]["acc"] == 0.123 and "source" not in by[(4, 1, 0)]
    assert by[(16, 4, 3)]["source"] == str(path) and by[(32, 1, 0)]["dir"] == "/new32"
    cells = capacity_report.grid_stats(merged)
    assert (32, 1) in cells and cells[(4, 1)]["seeds"] == [0, 1, 2, 3, 4]


def test_a_file_that_is_not_a_capacity_map_report_is_refused(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text('{"eval": {"acc": 0.5}}')
    with pytest.raises(ValueError, match="not a capacity-map report"):
        capacity_report.load_previous([str(path)])


def test_learning_speed_pairs_only_seeds_where_both_runs_left_the_plateau():
    records = []
    for seed in range(4):
        records.append({"n": 16, "N": 1, "seed": seed, "acc": 0.9, "converged": True,
                        "steps_to_90pct": 2000, "wall_s": 1.0, "dir": "/x"})  # fmt: skip
        stuck = seed == 3  # on the plateau: 90% of 0.2 comes at once, no learning speed
        steps = 250 if stuck else 1500 + 100 * seed
        records.append({"n": 16, "N": 4, "seed": seed, "acc": 0.2 if stuck else 0.9,
                        "converged": not stuck, "steps_to_90pct": steps,
                        "wall_s": 1.0, "dir": "/x"})  # fmt: skip
    cells = capacity_report.grid_stats(records)
    assert cells[(16, 4)]["left_plateau"] == [0, 1, 2] and cells[(16, 1)]["left_plateau"] == [
        0,
        1,
        2,
        3,
    ]
    g = cells[(16, 4)]["speed_gain"]
    assert g["seeds"] == [0, 1, 2] and g["diffs"] == [-500, -400, -300] and g["signs"] == [0, 3, 0]
    table = capacity_report.tables(cells, {16: dict.fromkeys((1, 2, 4, 8), 0.5)}, {})
    assert "| 16 | 4/4, 2000 | 3/4, 1600 | -400 [" in table
    stuck = capacity_report.stuck_vs_n1(cells, [16], 4)  # seed 3 stuck at N=4 only
    assert (stuck["pairs"], stuck["treated_only"], stuck["baseline_only"]) == (4, 1, 0)
    assert "| 4 | 4 | 1 | 0 | 0 | 1.000 |" in table
