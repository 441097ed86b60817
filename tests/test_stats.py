"""Paired statistics (experiments/sweeping/stats.py) and their place in the sweep report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments.sweeping import report, stats


def test_t_interval_on_a_hand_computed_case():
    # d = (1, 2, 3): mean 2, sd 1, se 1/sqrt(3); t_{0.975, 2} = 4.302653 (tables).
    mean, lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)
    assert mean == 2.0
    np.testing.assert_allclose([lo, hi], [2 - half, 2 + half], rtol=1e-6)
    # n = 5, d = (0.1, 0.2, 0.0, 0.3, -0.1): mean 0.1, sd sqrt(0.025); t_{0.975, 4} = 2.776445.
    mean, lo, hi = stats.t_interval([0.1, 0.2, 0.0, 0.3, -0.1])
    half = 2.776445 * math.sqrt(0.025) / math.sqrt(5)
    np.testing.assert_allclose([mean, lo, hi], [0.1, 0.1 - half, 0.1 + half], rtol=1e-6)
    assert math.isnan(stats.t_interval([0.5])[1]) and math.isnan(stats.t_interval([])[0])


def test_t_interval_covers_the_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        _, lo, hi = stats.t_interval(rng.normal(0.3, 1.0, size=5))
        hits += lo <= 0.3 <= hi
    assert 0.935 <= hits / 2000 <= 0.965


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_bootstrap_covers_the_known_mean_of_a_large_sample():
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, size=4000)
    mean, lo, hi = stats.bootstrap_interval(d)
    assert lo < 0.3 < hi
    # Its width is the normal one, 2 * 1.96 * sd / sqrt(n), to a few percent.
    np.testing.assert_allclose(hi - lo, 2 * 1.96 * d.std(ddof=1) / math.sqrt(d.size), rtol=0.08)
    assert stats.bootstrap_interval(d, seed=3) != stats.bootstrap_interval(d, seed=4)
    assert stats.bootstrap_interval(d) == stats.bootstrap_interval(d)  # reproducible


def test_sign_counts_and_summary_cell():
    d = stats.paired_differences([0.5, 0.6, 0.7, None, 0.4], [0.4, 0.6, 0.8, 0.1, 0.2])
    np.testing.assert_allclose(d, [0.1, 0.0, -0.1, 0.2])
    assert stats.sign_counts(d) == (2, 1, 1)
    s = stats.paired_summary(d, "t")
    assert s.n == 4 and (s.positive, s.negative, s.zero) == (2, 1, 1)
    assert s.fmt().startswith("+0.050 [") and s.fmt().endswith("] 2+ 1- 1=")
    assert stats.paired_summary([], "t").fmt() == "n/a"
    with pytest.raises(ValueError, match="interval method"):
        stats.paired_summary(d, "jackknife")


def _records(converged=True):
    out = []
    for n, accs in ((1, (0.5, 0.6, 0.55)), (2, (0.7, 0.65, 0.55))):
        for seed, a in enumerate(accs):
            out.append({"point": f"passes={n}", "overrides": {"passes": n}, "seed": seed,
                        "status": "completed", "eval": {"acc/d=4": a, "acc": a},
                        "run_dir": "/nonexistent", "steps_to_90pct": 100 * (seed + 1),
                        "converged": converged or n == 1})  # fmt: skip
    return out


def test_report_shows_the_interval_signs_and_flags_unconverged_runs(tmp_path):
    table = report.summary_table(_records())
    mean, lo, hi = stats.t_interval([0.2, 0.05, 0.0])
    cell = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] 2+ 0- 1="
    assert f"| passes=2 | 3 | {cell} | {cell} |" in table
    assert "+0.200 +0.050 +0.000" in table  # every seed's difference too
    assert "paired t-interval" in table and report.DAGGER not in table
    assert "| passes=1 | 3 | 0.550 ± 0.050 | 0.550 ± 0.050 | 200 ± 100 | 3/3 |" in table
    flagged = report.summary_table(_records(converged=False), interval="bootstrap")
    assert f"| passes=2{report.DAGGER} | 3 |" in flagged and "0/3" in flagged
    assert "bootstrap" in flagged and report.UNCONVERGED_NOTE in flagged
    report.plot_sweep(_records(), str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_verdict_names_the_direction_and_the_unconverged_pairs():
    mean, lo, hi = stats.t_interval([0.2, 0.05, 0.0])  # includes 0
    (line,) = report.verdict_lines(_records())
    assert f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}], 2+/0- over 3 seeds" in line
    assert "**no effect shown** (3/3 pairs both converged)" in line
    (flagged,) = report.verdict_lines(_records(converged=False))
    assert "(0/3 pairs both converged; provisional" in flagged

    def shifted(by):  # passes=2 runs moved by `by` + a little per seed, passes=1 at 0.5
        return [
            dict(r, eval={"acc": 0.5 if r["overrides"]["passes"] == 1 else 0.5 + by(r["seed"])})
            for r in _records()
        ]

    # Without confirmation seeds a clear one-set reading is shown but never the verdict.
    (up,) = report.verdict_lines(shifted(lambda s: 0.1 + 0.01 * s))
    assert "**no effect shown** (these seeds alone: helps, unconfirmed;" in up
    (down,) = report.verdict_lines(shifted(lambda s: -0.1 - 0.01 * s))
    assert "**no effect shown** (these seeds alone: hurts, unconfirmed;" in down


def test_the_verdict_needs_the_confirmation_seeds_to_agree():
    def records(by):  # seeds 0-5, passes=2 moved by `by(seed)` against passes=1 at 0.5
        return [
            dict(r, seed=s, eval={"acc": 0.5 if r["overrides"]["passes"] == 1 else 0.5 + by(s)})
            for s in range(6)
            for r in (_records()[0], _records()[3])  # one record per N
        ]

    confirmed = report.verdict_lines(records(lambda s: 0.1 + 0.01 * s), confirm_seeds=(3, 4, 5))
    assert "over 3 seeds; confirmation seeds 3,4,5: +0.140" in confirmed[0]
    assert "**helps**" in confirmed[0]
    hurt = report.verdict_lines(records(lambda s: -0.1 - 0.01 * s), confirm_seeds=(3, 4, 5))
    assert "**hurts**" in hurt[0]
    # Helps on seeds 0-2, not on 3-5 (one of them goes the other way): no effect shown.
    flips = report.verdict_lines(
        records(lambda s: 0.1 + 0.01 * s if s != 4 else -0.3), confirm_seeds=(3, 4, 5)
    )
    assert "**no effect shown**" in flips[0] and "unconfirmed" not in flips[0]


def test_paired_failures_is_mcnemars_exact_test_on_the_discordant_pairs():
    # 5 discordant pairs all one way: p = 2 * 0.5**5 = 0.0625; concordant pairs add nothing
    r = stats.paired_failures([1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0])
    assert (r["pairs"], r["treated_only"], r["baseline_only"], r["both"]) == (8, 5, 0, 1)
    assert r["p"] == pytest.approx(0.0625)
    # 2 one way, 1 the other: p = P(X <= 1 or X >= 2 | n=3) = 1
    assert stats.paired_failures([1, 1, 0], [0, 0, 1])["p"] == pytest.approx(1.0)
    assert stats.paired_failures([0, 1], [0, 1])["p"] == 1.0  # no discordant pair
    with pytest.raises(ValueError, match="2 treated outcomes but 3"):
        stats.paired_failures([0, 1], [0, 1, 1])


def test_sweep_plot_reads_at_a_glance(tmp_path):
    """N as equally spaced categories; one series per depth (the aggregate over a single
    depth is not drawn twice); accuracy intervals within [0, 1]; every seed's paired
    difference as a dot; learning curves coloured by N, one line per seed; a Figure
    returned, the PNG written, the matplotlib backend left alone."""
    import matplotlib
    from matplotlib.collections import PathCollection
    from matplotlib.figure import Figure

    recs = []
    for n, accs in ((1, (0.90, 0.99)), (2, (0.97, 1.0)), (4, (0.99, 1.0))):
        for seed, a in enumerate(accs):
            run_dir = tmp_path / f"passes={n},seed={seed}"
            run_dir.mkdir()
            (run_dir / "metrics.jsonl").write_text(
                "".join(json.dumps({"step": s, "loss": 3.0 / s}) + "\n" for s in (1, 2, 3))
            )
            recs.append({"point": f"passes={n}", "overrides": {"passes": n}, "seed": seed,
                         "status": "completed", "eval": {"acc/d=8": a, "acc": a},
                         "run_dir": str(run_dir)})  # fmt: skip
    backend = matplotlib.get_backend()
    fig = report.plot_sweep(recs, str(tmp_path / "p.png"))
    assert isinstance(fig, Figure) and matplotlib.get_backend() == backend
    assert (tmp_path / "p.png").stat().st_size > 1000
    ax1, ax3, ax2 = fig.axes
    assert [t.get_text() for t in ax1.get_xticklabels()] == ["1", "2", "4"]
    assert list(ax1.get_xticks()) == [0, 1, 2]
    assert [t.get_text() for t in ax1.get_legend().get_texts()] == ["d=8"]  # no "all" twin
    assert ax1.get_ylim() == (0.0, 1.0)
    tops = [seg[:, 1].max() for c in ax1.containers for seg in c[2][0].get_segments()]
    assert tops and max(tops) <= 1.0  # the t-interval of 0.97, 1.0 reaches past 1: clipped
    scatters = [c for c in ax3.collections if isinstance(c, PathCollection)]
    dots = np.concatenate([c.get_offsets()[:, 1] for c in scatters])
    assert sorted(dots.round(3)) == sorted([0.07, 0.01, 0.09, 0.01])  # each seed's difference
    colors = {}
    for line in ax2.get_lines():
        colors.setdefault(matplotlib.colors.to_hex(line.get_color()), 0)
        colors[matplotlib.colors.to_hex(line.get_color())] += 1
    assert sorted(colors.values()) == [2, 2, 2]  # 3 colours (N), 2 seeds each
    assert [t.get_text() for t in ax2.get_legend().get_texts()] == [
        "passes=1", "passes=2", "passes=4",
    ]  # fmt: skip
