"""Sweeps: grid expansion, field checks, and a tiny end-to-end sweep with resume."""

import json
import os
import subprocess
import sys

import pytest

from sleep_consolidation import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_expand_grid_pairs_seeds_and_zips():
    runs = sweep.expand_grid({"passes": [1, 2], "window+steps": [(8, 10), (16, 20)]}, seeds=[0, 1])
    assert len(runs) == 8
    assert {r.seed for r in runs} == {0, 1}
    assert runs[0].overrides() == {"passes": 1, "steps": 10, "window": 8, "seed": 0}
    with pytest.raises(ValueError, match="at least one seed"):
        sweep.expand_grid({"passes": [1]}, seeds=[])
    with pytest.raises(ValueError, match="2-tuples"):
        sweep.expand_grid({"a+b": [1]}, seeds=[0])


def test_check_fields_names_the_unknown_field():
    from ml_collections import ConfigDict

    base = ConfigDict({"passes": 1, "seed": 0, "task": {"window": 8}})
    sweep.check_fields(base, sweep.expand_grid({"passes": [1], "task.window": [4]}, [0]))
    with pytest.raises(ValueError, match="'passess' does not exist"):
        sweep.check_fields(base, sweep.expand_grid({"passess": [1]}, [0]))


def test_summary_table_reports_paired_differences():
    recs = []
    for n, accs in ((1, (0.5, 0.6)), (2, (0.7, 0.65))):
        for seed, a in enumerate(accs):
            recs.append(
                {
                    "point": f"passes={n}",
                    "overrides": {"passes": n},
                    "seed": seed,
                    "status": "completed",
                    "eval": {"acc/d=4": a, "acc": a},
                    "run_dir": "/nonexistent",
                }
            )
    table = sweep.summary_table(recs)
    assert "passes=2" in table and "+0.200 +0.050" in table


def test_eval_n_table_reads_the_extra_eval_passes():
    recs = [
        {"point": "passes=2", "overrides": {"passes": 2}, "seed": s, "status": "completed",
         "eval": {"acc": 0.5, "N1/acc": 0.1 + s, "N1/acc/d=4": 0.0, "N4/acc": 0.3}}
        for s in (0, 1)
    ]  # fmt: skip
    table = sweep.eval_n_table(recs)
    assert "| eval N=1 | eval N=4 |" in table
    assert "| passes=2 | 0.600 ± 0.707 | 0.300 ± 0.000 |" in table
    assert sweep.eval_n_table([{**recs[0], "eval": {"acc": 0.5}}]) is None


def test_frontier_is_the_largest_depth_passed_without_a_gap():
    def rec(seed, accs):
        ev = {f"acc/d={d}": a for d, a in zip((1, 2, 4), accs, strict=True)}
        return {"point": "passes=1", "overrides": {"passes": 1}, "seed": seed,
                "status": "completed", "eval": ev}  # fmt: skip

    recs = [rec(0, (0.9, 0.6, 0.8)), rec(1, (0.9, 0.3, 0.8)), rec(2, (0.2, 0.9, 0.9))]
    table = sweep.frontier_table(recs, threshold=0.5)
    assert "| passes=1 | 4 1 0 | 1.67 |" in table  # a gap at d=2 stops seed 1 at d=1


def _run_sweep(workdir, extra=()):
    cmd = [
        sys.executable,
        "-m",
        "experiments.sweep",
        "--sweep=experiments/configs/sweeps.py:tiny",
        f"--workdir={workdir}",
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # heavy (subprocesses / training); CI runs it with -m slow
def test_tiny_sweep_end_to_end_and_resume(tmp_path):
    wd = tmp_path / "sweep"
    out = _run_sweep(wd)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [json.loads(x) for x in (wd / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(r["status"] == "completed" for r in lines)
    assert any(k.startswith("acc/d=") for k in lines[0]["eval"])
    assert "passes=2" in (wd / "summary.md").read_text()
    assert (wd / "sweep.png").stat().st_size > 1000
    again = _run_sweep(wd)
    assert again.returncode == 0
    assert again.stdout.count("skip finished") + again.stderr.count("skip finished") == 2


def test_unknown_sweep_field_fails_before_training(tmp_path):
    out = _run_sweep(tmp_path / "bad", extra=["--sweep.axes.no_such_field=(1,2)"])
    assert out.returncode != 0
    assert "no_such_field" in out.stdout + out.stderr
    assert not (tmp_path / "bad" / "runs").exists()


def test_runs_are_named_by_what_they_change_so_sweeps_share_them():
    """The reset sweep's N=1 and N=2 carry points are the main job's runs (same names, same
    launch overrides); a changed field, fixed or swept, makes a different run."""
    from experiments.configs import recall, sweeps

    base = recall.get_config("capacity")

    def stored(name, fixed=None):
        s = sweeps.get_config(name)
        runs = sweep.expand_grid(s.axes.to_dict(), s.seeds)
        sweep.check_fields(base, runs)
        return {r.point_name + f",{r.seed}": r for r in sweep.store_as_changes(runs, base, fixed)}

    main, reset = stored("main"), stored("reset")
    assert main["passes=1,0"].name == "base,seed=0"
    assert reset["passes=1,reset_between_passes=False,0"].name == main["passes=1,0"].name
    assert reset["passes=2,reset_between_passes=False,1"].name == main["passes=2,1"].name
    assert reset["passes=2,reset_between_passes=True,1"].name == (
        "passes=2,reset_between_passes=True,seed=1"
    )
    changed = stored("main", fixed={"steps": 7})
    assert changed["passes=1,0"].name == "steps=7,seed=0"
    cmd = sweep.run_command("c.py", "capacity", changed["passes=2,0"], "/tmp/x")
    assert cmd[-3:] == ["--config.passes=2", "--config.steps=7", "--config.seed=0"]
    trunc = stored("truncation")  # None (the base's grad_passes) is not passed on
    run = trunc["estimator=full,grad_passes=None,passes=4,2"]
    assert run.name == "passes=4,seed=2"


@pytest.mark.slow  # compiles two tiny train steps in a subprocess
def test_step_memory_reports_every_point():
    cmd = [sys.executable, "-m", "experiments.step_memory",
           "--sweep=experiments/configs/sweeps.py:tiny", "--reps=1"]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| passes=")]
    assert len(rows) == 2, out.stdout
    mib = [float(r.split("|")[2]) for r in rows]
    assert all(m > 0 for m in mib) and mib[1] > mib[0]  # N=2 keeps more for the backward


def test_declared_baselines_are_taken_whole():
    from experiments.configs import sweeps

    assert sweeps.rules().baseline.to_dict() == {"rule": "delta"}
    assert sweeps.main().baseline.to_dict() == {"passes": 1}
