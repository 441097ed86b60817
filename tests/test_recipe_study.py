"""The recipe study's plan, scheduler and report (experiments/recipes.py), on synthetic runs."""

from __future__ import annotations

import json
import os
import sys

import pytest

from experiments import recipes as rs
from experiments.configs.sweep_spec import CONVERGED

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_queue_lists_recipe_seed_pairs_in_order_and_refuses_bad_entries():
    assert rs.parse_queue(["warm_N4@0-2", "today_N1@7"]) == [
        ("warm_N4", 0), ("warm_N4", 1), ("warm_N4", 2), ("today_N1", 7),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown recipe"):
        rs.parse_queue(["nope@0"])
    with pytest.raises(ValueError, match="not recipe@seed"):
        rs.parse_queue(["warm_N4@a-b"])


def test_a_warm_start_is_launched_from_its_source_run_of_the_same_seed(tmp_path):
    cmd = rs.command(str(tmp_path), 16, "warm_N4", 3, cap=6000, pass_stats=64)
    source = os.path.abspath(rs.run_dir(str(tmp_path), 16, "today_N1", 3))
    assert f"--config.init_from={source}" in cmd
    assert "--config.passes=4" in cmd and "--config.seed=3" in cmd
    assert "--config.task.num_pairs_values=(16,)" in cmd and "--config.task.window=32" in cmd
    assert f"--config.stop_patience={CONVERGED['stop_patience']}" in cmd
    assert not any("init_from" in a for a in rs.command(str(tmp_path), 16, "today_N1", 3,
                                                        cap=6000, pass_stats=64))  # fmt: skip


def _fake_run(workdir, recipe, seed, acc, stopped_at=2000, capped=False):
    path = rs.run_dir(workdir, 16, recipe, seed)
    os.makedirs(path)
    summary = {"status": "completed", "eval": {"acc": acc}, "step": stopped_at,
               "stop_reason": "step_cap" if capped else "converged", "steps_to_90pct": 250,
               "wall_s": 10.0}  # fmt: skip
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        passes = rs.RECIPES[recipe].passes
        line = {"step": stopped_at, **{f"pass_stats/h_norm/p{p}": 2.0 * p for p in (1, passes)}}
        f.write(json.dumps(line) + "\n")


def test_the_report_pairs_each_recipe_with_its_baselines_seed_by_seed(tmp_path):
    wd = str(tmp_path)
    for seed, (n1, w1, w4) in enumerate([(0.90, 0.92, 0.95), (0.30, 0.93, 0.96),
                                         (0.91, 0.94, 0.93)]):  # fmt: skip
        _fake_run(wd, "today_N1", seed, n1, stopped_at=6000, capped=True)
        _fake_run(wd, "warm_N1", seed, w1)
        _fake_run(wd, "warm_N4", seed, w4)
    text, recs = rs.report(wd, [16], [0, 1, 2], ["today_N1", "warm_N1", "warm_N4"], cap=6000)
    assert len(recs) == 9
    assert "| today_N1 | 1 | 0.900† | 0.300† | 0.910† | 2/3 |" in text
    rows = {ln.split("|")[1].strip() + "/" + ln.split("|")[2].strip(): ln
            for ln in text.splitlines() if ln.startswith("| warm_N4 |")}  # fmt: skip
    assert "+0.243" in rows["warm_N4/today_N1"]  # (0.05 + 0.66 + 0.02) / 3
    assert "1 / 0 (p = 1)" not in rows["warm_N4/today_N1"]  # stuck only in the baseline
    assert "0 / 1 (p = 1)" in rows["warm_N4/today_N1"]
    assert "with the source's steps" in rows["warm_N4/today_N1"]
    assert "with the source's steps" not in rows["warm_N4/warm_N1"]  # same source: cancels
    assert "| 4.00 |" in rows["warm_N4/4"]  # |h| after pass 4 / after pass 1


def test_train_all_waits_for_a_source_run_and_skips_one_whose_source_failed(tmp_path):
    """The scheduler (through the sweep's local launcher, a stand-in trainer): a warm start
    starts only once its source finished; one whose source run failed is skipped; a
    finished run is not started again."""
    from experiments.sweeping import launch

    config = tmp_path / "base.py"
    config.write_text(
        "from ml_collections import ConfigDict\n"
        "def get_config(arg=None):\n"
        "    return ConfigDict({'steps': 4, 'passes': 1, 'seed': 0, 'log_every': 2})\n"
    )
    fake = [sys.executable, os.path.join(REPO, "tests", "fake_train.py"), f"--config={config}"]
    d = {k: str(tmp_path / k) for k in ("src", "warm", "bad_src", "orphan")}
    jobs = [
        ("warm", d["warm"], [*fake, f"--workdir={d['warm']}"], d["src"]),  # listed first
        ("src", d["src"], [*fake, f"--workdir={d['src']}"], None),
        ("bad_src", d["bad_src"], [sys.executable, "-c", "raise SystemExit(3)"], None),
        ("orphan", d["orphan"], [*fake, f"--workdir={d['orphan']}"], d["bad_src"]),
    ]
    launcher = launch.Launcher("local", str(tmp_path / "submitit"), parallel=2)
    codes = rs.train_all(jobs, launcher, poll_s=0.1)
    assert codes == {"src": 0, "warm": 0, "bad_src": 3}  # orphan skipped, never started
    assert not os.path.exists(os.path.join(d["orphan"], "config.json"))
    first = os.path.getmtime(os.path.join(d["src"], "summary.json"))
    assert os.path.getmtime(os.path.join(d["warm"], "config.json")) >= first  # waited
    # Everything finished is skipped on a rerun; only the failed job is tried again.
    assert rs.train_all(jobs, launcher, poll_s=0.1) == {"bad_src": 3}
