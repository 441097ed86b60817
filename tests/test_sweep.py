"""Sweeps: the grid, launching through submitit, resume and skip, config identity, the
lock, the progress display, the dry run, overrides from the command line, the report."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
from rich.console import Console

from experiments.sweeping import cli, grid, launch, lock, progress, report, runner
from experiments.sweeping.rundir import RunDir
from sleep_consolidation.training import machine, run_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_TRAIN = (sys.executable, os.path.join(REPO, "tests", "fake_train.py"))


# --- the grid -------------------------------------------------------------------------


def test_expand_grid_pairs_seeds_and_zips():
    runs = grid.expand_grid({"passes": [1, 2], "window+steps": [(8, 10), (16, 20)]}, seeds=[0, 1])
    assert len(runs) == 8
    assert {r.seed for r in runs} == {0, 1}
    assert runs[0].overrides() == {"passes": 1, "steps": 10, "window": 8, "seed": 0}
    with pytest.raises(ValueError, match="at least one seed"):
        grid.expand_grid({"passes": [1]}, seeds=[])
    with pytest.raises(ValueError, match="2-tuples"):
        grid.expand_grid({"a+b": [1]}, seeds=[0])


def test_seed_order_launches_whole_pairs_first_and_a_bad_order_is_refused():
    axes = {"passes": [4, 1]}
    by_point = [(r.point, r.seed) for r in grid.expand_grid(axes, [3, 0])]
    by_seed = [(r.point, r.seed) for r in grid.expand_grid(axes, [3, 0], order="seeds")]
    assert [s for _, s in by_point] == [3, 0, 3, 0]
    assert by_seed == [(by_point[0][0], 3), (by_point[2][0], 3), (by_point[1][0], 0),
                       (by_point[3][0], 0)]  # fmt: skip
    assert sorted(by_seed) == sorted(by_point)  # the same runs, only reordered
    with pytest.raises(ValueError, match="sweep order 'pairs'"):
        grid.expand_grid(axes, [0], order="pairs")


def test_seed_order_from_the_command_line():
    default = _sweep_from_command_line()
    sweep = _sweep_from_command_line("--sweep.order=seeds", "--sweep.seeds=0,1")
    assert default.order == "points" and sweep.order == "seeds"
    assert [r.seed for r in sweep.runs()] == sorted(r.seed for r in sweep.runs())
    assert {r.name for r in sweep.runs()} == {
        r.name for r in _sweep_from_command_line("--sweep.seeds=0,1").runs()
    }


def _sweep_from_command_line(*overrides, name="tiny"):
    """The Sweep `python -m experiments.sweep --sweep=sweeps.py:<name> *overrides` runs,
    parsed by the same ml_collections flag as the entry point."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["sweep", f"--sweep=experiments/configs/sweeps.py:{name}", *overrides]
    argv, dotted = cli.split_dotted(argv)
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "sweep", flag_values=values, sys_argv=argv, lock_config=False, accept_new_attributes=True
    )
    values(argv)
    cli.apply_dotted(holder.value, dotted)
    return grid.Sweep.from_config(holder.value)


@pytest.mark.parametrize(
    "flag, values",
    [
        ("--sweep.axes.eviction=hard,sliding", ["hard", "sliding"]),  # strings, not letters
        ("--sweep.axes.eviction=sliding", ["sliding"]),
        ("--sweep.axes.rule='delta','hebbian'", ["delta", "hebbian"]),
        ("--sweep.axes.reset_between_passes=true,false", [True, False]),
        ("--sweep.axes.reset_between_passes=True", [True]),
        ("--sweep.axes.window=8,16", [8, 16]),
        ("--sweep.axes.window=8", [8]),
        ("--sweep.axes.learning_rate=0.1,3e-3", [0.1, 0.003]),
        ("--sweep.axes.layout=('attn','ssm'),('attn','attn')", [("attn", "ssm"), ("attn", "attn")]),
        ("--sweep.axes.passes=1,8", [1, 8]),  # an axis the sweep file already has
        ("--sweep.axes.task.window=8,16", [8, 16]),  # a dotted field (a task knob)
        ("--sweep.axes.task.num_pairs_values=(2,),(4,)", [(2,), (4,)]),
        ("--sweep.axes.task.name=recall", ["recall"]),
        ("--sweep.axes.steps+layout=((23,('attn','ssm')),)", [(23, ("attn", "ssm"))]),  # joint
    ],
)
def test_axes_from_the_command_line_are_the_values_typed(flag, values):
    sweep = _sweep_from_command_line(flag)
    field = flag.split("=")[0].split("axes.")[1]
    assert sweep.axes[field] == values
    assert all(type(a) is type(b) for a, b in zip(sweep.axes[field], values))


def test_every_run_config_is_validated_naming_the_run_and_field(tmp_path):
    sweep = _sweep_from_command_line("--sweep.axes.eviction=hard,slidin")
    planned = runner.plan(sweep, str(tmp_path / "runs"))
    assert len(planned) == 4
    with pytest.raises(
        ValueError,
        match=r"^run \S*eviction=slidin\S*seed=0: .*eviction must be "
        r"one of \('hard', 'sliding'\), got 'slidin' \(1 more of the 4 runs",
    ):
        runner.check_configs(planned)
    runner.check_configs(runner.plan(_sweep_from_command_line(), str(tmp_path / "runs")))
    with pytest.raises(ValueError, match=r"--config.passes=1,x: invalid literal for int"):
        runner.plan(_sweep_from_command_line("--sweep.axes.passes=1,x"), str(tmp_path))


def test_check_fields_names_the_unknown_field():
    from ml_collections import ConfigDict

    base = ConfigDict({"passes": 1, "seed": 0, "task": {"window": 8}})
    grid.check_fields(base, grid.expand_grid({"passes": [1], "task.window": [4]}, [0]))
    with pytest.raises(ValueError, match="'passess' does not exist"):
        grid.check_fields(base, grid.expand_grid({"passess": [1]}, [0]))


def test_runs_are_named_by_their_swept_fields_and_launched_with_their_changes():
    """A run's name is its swept fields and seed (the compared field always: the tiny
    sweep's N=1 run is passes=1); the reset sweep's N=1 and N=2 carry points launch with
    the main job's overrides (the same configs, so a shared runs directory shares them);
    tables show the fields that vary and the compared ones."""
    from experiments.configs import sweeps

    def runs(name, **fixed):
        s = sweeps.get_config(name)
        s.fixed.update(fixed)
        return {r.label: r for r in grid.Sweep.from_config(s).runs()}

    tiny = runs("tiny")
    assert sorted(tiny) == ["passes=1,seed=0", "passes=2,seed=0"]
    assert [r.name for r in tiny.values()] == list(tiny)
    main, reset = runs("main_2000"), runs("reset")
    for n, reset_s, same in ((1, False, True), (2, False, True), (2, True, False)):
        stored = reset[f"passes={n},reset_between_passes={reset_s},seed=1"].stored
        assert (stored == main[f"passes={n},seed=1"].stored) == same
    changed = runs("main_2000", steps=7)
    assert changed["passes=2,seed=0"].name == "passes=2,seed=0"  # fixed: in config.json only
    flags = grid.override_flags(grid.launch_overrides(changed["passes=2,seed=0"]))
    assert flags == ["--config.passes=2", "--config.steps=7", "--config.seed=0"]
    trunc = runs("truncation")  # None (the base's grad_passes) is not passed on
    run = trunc["estimator=full,grad_passes=None,passes=4,seed=2"]
    assert grid.launch_overrides(run) == {"passes": 4, "seed": 2}
    rules = runs("rules")  # passes=2 for every point: named in the directory, not the table
    assert "rule=hebbian,seed=0" in rules
    assert rules["rule=hebbian,seed=0"].name == "passes=2,rule=hebbian,seed=0"
    main_n8 = runs("main_recall")  # one load: the table says passes=4, the directory the load too
    assert set(main_n8) == {f"passes={n},seed={s}" for n in (1, 4) for s in range(5)}
    assert main_n8["passes=4,seed=3"].name == (
        "passes=4,task.num_pairs_values=(8),task.window=16,seed=3"
    )


def test_seed_placeholder_in_a_fixed_override_names_each_runs_own_seed():
    """`{seed}` in a fixed string override (a warm start's `init_from`) becomes each run's
    seed, in what it is launched with and stored as; other values pass through."""
    from experiments.configs import sweeps

    s = sweeps.get_config("tiny")
    s.fixed.update({"init_from": "src/passes=1,seed={seed}", "steps": 7})
    s.seeds = (3, 4)
    runs = grid.Sweep.from_config(s).runs()
    got = {(r.seed, grid.launch_overrides(r)["init_from"]) for r in runs}
    assert got == {(3, "src/passes=1,seed=3"), (4, "src/passes=1,seed=4")}
    assert all(grid.launch_overrides(r)["steps"] == 7 for r in runs)
    assert grid.for_seed({"init_from": None, "t": (1,)}, 2) == {"init_from": None, "t": (1,)}


def test_launch_config_is_what_the_training_flags_build():
    """The sweep compares config.json with the config its own flags build: a tuple field
    and a None placeholder survive the round trip through the command line."""
    flags = grid.override_flags({"layout": ("attn", "attn"), "window": 64, "passes": 4})
    c = grid.load_config_file("experiments/configs/recall.py", "tiny", flags)
    assert tuple(c.layout) == ("attn", "attn") and c.window == 64 and c.passes == 4
    assert grid.load_config_file("experiments/configs/recall.py", "tiny").window is None


def test_declared_baselines_are_taken_whole():
    from experiments.configs import sweeps

    assert sweeps.rules().baseline.to_dict() == {"rule": "delta"}
    assert sweeps.main_recall().baseline.to_dict() == {"passes": 1}
    assert sweeps.main().to_dict() == sweeps.depo_slice().to_dict()  # the README's main job


def test_fake_trainer_writes_the_files_the_library_names():
    from sleep_consolidation.training import checkpointing
    from sleep_consolidation.training.run_dir import METRICS_FILE, SUMMARY_FILE

    sys.path.insert(0, os.path.join(REPO, "tests"))
    import fake_train

    assert (fake_train.CONFIG_FILE, fake_train.METRICS_FILE, fake_train.SUMMARY_FILE) == (
        checkpointing.CONFIG_FILE, METRICS_FILE, SUMMARY_FILE,
    )  # fmt: skip


# --- the report -----------------------------------------------------------------------


def test_summary_table_reports_paired_differences():
    recs = []
    for n, accs in ((1, (0.5, 0.6)), (2, (0.7, 0.65))):
        for seed, a in enumerate(accs):
            recs.append({"point": f"passes={n}", "overrides": {"passes": n}, "seed": seed,
                         "status": "completed", "eval": {"acc/d=4": a, "acc": a},
                         "run_dir": "/nonexistent"})  # fmt: skip
    table = report.summary_table(recs)
    assert "passes=2" in table and "+0.200 +0.050" in table


def test_eval_n_table_reads_the_extra_eval_passes():
    recs = [
        {"point": "passes=2", "overrides": {"passes": 2}, "seed": s, "status": "completed",
         "eval": {"acc": 0.5, "N1/acc": 0.1 + s, "N1/acc/d=4": 0.0, "N4/acc": 0.3}}
        for s in (0, 1)
    ]  # fmt: skip
    table = report.eval_n_table(recs)
    assert "| eval N=1 | eval N=4 |" in table
    assert "| passes=2 | 0.600 ± 0.707 | 0.300 ± 0.000 |" in table
    assert report.eval_n_table([{**recs[0], "eval": {"acc": 0.5}}]) is None


def test_frontier_is_the_largest_depth_passed_without_a_gap():
    def rec(seed, accs):
        ev = {f"acc/d={d}": a for d, a in zip((1, 2, 4), accs, strict=True)}
        return {"point": "passes=1", "overrides": {"passes": 1}, "seed": seed,
                "status": "completed", "eval": ev}  # fmt: skip

    recs = [rec(0, (0.9, 0.6, 0.8)), rec(1, (0.9, 0.3, 0.8)), rec(2, (0.2, 0.9, 0.9))]
    table = report.frontier_table(recs, threshold=0.5)
    assert "| passes=1 | 4 1 0 | 1.67 |" in table  # a gap at d=2 stops seed 1 at d=1


def test_per_seed_table_lists_every_run_with_its_depths_stop_and_frontier():
    def rec(point, seed, accs, stopped, converged):
        ev = {f"acc/d={d}": a for d, a in zip((1, 2, 4), accs, strict=True)}
        return {"point": point, "overrides": {}, "seed": seed, "status": "completed",
                "eval": {**ev, "acc": sum(accs) / 3}, "stopped_at": stopped,
                "converged": converged, "train_s": 12.4}  # fmt: skip

    recs = [
        rec("passes=4", 1, (0.9, 0.2, 0.8), 8000, False),
        rec("passes=4", 0, (0.9, 0.6, 0.3), 3000, True),
        {"point": "passes=4", "overrides": {}, "seed": 2, "status": "failed", "eval": {}},
    ]
    table = report.per_seed_table(recs, threshold=0.5).splitlines()
    assert table[2] == "| point | seed | d=1 | d=2 | d=4 | all | stopped | train s | frontier |"
    # seeds in order, the unfinished run left out, a capped run marked, a gap ends the frontier
    assert table[4:] == [
        "| passes=4 | 0 | 0.900 | 0.600 | 0.300 | 0.600 | 3000 | 12 | 2 |",
        "| passes=4 | 1 | 0.900 | 0.200 | 0.800 | 0.633 | 8000† | 12 | 1 |",
        "",
        report.UNCONVERGED_NOTE,
    ]
    assert "frontier" not in report.per_seed_table(recs).splitlines()[2]


def test_a_depth_study_report_has_the_per_seed_table(tmp_path):
    recs = [{"point": f"passes={n}", "overrides": {"passes": n}, "seed": s,
             "status": "completed", "eval": {"acc/d=1": 0.9, "acc/d=2": 0.2 + 0.3 * n},
             "stopped_at": 100, "converged": True, "run_dir": "/nonexistent"}
            for n in (1, 2) for s in (0, 1)]  # fmt: skip
    from experiments.configs.sweep_spec import make_sweep

    cfg = make_sweep("experiments/configs/depo.py", {"passes": [1, 2]}, [0, 1], frontier=0.5)
    text = report.write_report(str(tmp_path), cfg, recs)
    assert "**acc per seed**" in text and "| passes=2 | 1 | 0.900 | 0.800 |" in text
    assert (tmp_path / "summary.md").read_text().count("**acc per seed**") == 1
    # A verdict read at one depth (the main job's acc/d=2) still tabulates every depth of
    # acc, and the frontier runs through them.
    cfg.metric = "acc/d=2"
    text = report.write_report(str(tmp_path), cfg, recs)
    assert "Verdict (acc/d=2, passes=2 vs passes=1)" in text
    assert "**acc per seed**" in text and "| passes=2 | 1 | 0.900 | 0.800 |" in text
    assert "| passes=1 | 2 2 | 2.00 |" in text  # not "0 0": acc/d=2/d=k does not exist
    cfg.metric, cfg.frontier = "acc", None
    assert "per seed**" not in report.write_report(str(tmp_path), cfg, recs)


# --- the run directory reader ---------------------------------------------------------


def test_run_dir_reader_drops_a_torn_metrics_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "loss": 2.0}\n{"step": 10, "lo')
    (tmp_path / "summary.json").write_text('{"status": "compl')  # caught mid-write
    rd = RunDir(str(tmp_path))
    assert rd.metrics() == [{"step": 5, "loss": 2.0}]
    assert rd.summary() is None and not rd.finished() and rd.config() is None


# --- the lock -------------------------------------------------------------------------


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / lock.LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": None}))
        with pytest.raises(lock.LockedError, match=f"pid {holder.pid}"):
            lock.DirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    # The same lock file, its holder now dead: taken over, and released on exit.
    with lock.DirLock(str(tmp_path)) as held:
        assert held.holder()["pid"] == os.getpid()
        with pytest.raises(lock.LockedError):  # held by a live process (this one)
            lock.DirLock(str(tmp_path)).acquire()
    assert not (tmp_path / lock.LOCK_FILE).exists()


def test_an_empty_lock_is_being_written_when_young_and_taken_over_when_old(tmp_path):
    """An empty lock file is another process between creating and writing it: taking it
    over then would let both run. Left empty long enough, its writer died: taken over."""
    path = tmp_path / lock.LOCK_FILE
    path.write_text("")
    with pytest.raises(lock.LockedError, match="empty or partly written.*is starting"):
        lock.DirLock(str(tmp_path)).acquire()
    assert path.read_text() == ""  # left alone for its writer
    old = time.time() - 2 * run_lock._UNWRITTEN_GRACE_S
    os.utime(path, (old, old))
    with lock.DirLock(str(tmp_path)) as held:
        assert held.holder()["pid"] == os.getpid()


# --- the progress display -------------------------------------------------------------


def _metrics(run_dir, lines):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in lines)


def test_eta_from_measured_step_rates(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    # 10 s of startup, then 0.5 s per step: step 10 at 15 s, step 20 at 20 s.
    _metrics(a, [{"step": 10, "loss": 2.0, "elapsed_s": 15.0},
                 {"step": 20, "loss": 1.5, "elapsed_s": 20.0}])  # fmt: skip
    runs = [progress.RunProgress("a", a, 40, progress.RUNNING),
            progress.RunProgress("b", b, 40, progress.QUEUED)]  # fmt: skip
    for r in runs:
        r.read()
    assert runs[0].step == 20 and runs[0].sec_per_step == pytest.approx(0.5)
    assert runs[0].overhead_s == pytest.approx(10.0)
    # a: 20 steps left = 10 s; b: 10 s startup + 40 steps = 30 s, in the free slot (two
    # slots) or after a (one slot).
    assert progress.remaining_s(runs, parallel=2) == pytest.approx(30.0)
    assert progress.remaining_s(runs, parallel=1) == pytest.approx(40.0)
    assert progress.remaining_s([progress.RunProgress("b", b, 40)], 1) is None
    assert progress.remaining_s([progress.RunProgress("b", b, 40)], 1, prior_run_s=7) == 7
    # Once a run has finished, queued runs are charged its whole time (a run that stops
    # early is not charged its step cap).
    done = progress.RunProgress("c", b, 40, progress.DONE, wall_s=12.0)
    assert progress.remaining_s([done, runs[1]], 1, prior_run_s=7) == pytest.approx(12.0)
    # A run compiling for longer than expected still has its 40 steps at 0.5 s ahead.
    late = progress.RunProgress("d", b, 40, progress.RUNNING, started_at=0.0)
    assert progress.remaining_s([runs[0], late], 2, prior_run_s=7, now=100.0) == 20.0


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_progress_view_counts_down_shows_compiling_and_rates(tmp_path):
    """The tiny sweep's two runs, one slot, est_run_s=30, on a fake clock: the ETA counts
    down while the first run compiles, then follows its own rate; the plain lines say
    "compiling", then step, loss and s/step, one line each, never wrapped."""
    a, b = str(tmp_path / "passes=1,seed=0"), str(tmp_path / "passes=2,seed=0")
    runs = [progress.RunProgress("passes=1,seed=0", a, 20),
            progress.RunProgress("passes=2,seed=0", b, 20)]  # fmt: skip
    clock, out = FakeClock(), io.StringIO()
    console = Console(file=out, width=80)
    assert not console.is_terminal
    view = progress.SweepProgress("sweep tiny", runs, 1, console, plain_every=0,
                                  prior_run_s=30.0, clock=clock)  # fmt: skip
    with view:
        assert "ETA 1m00s" in view.headline()  # nothing measured: 2 x est_run_s
        runs[0].state = progress.RUNNING
        view.refresh()
        clock.t += 10
        view.refresh()
        assert "elapsed 0m10s, ETA 0m50s" in view.headline()  # counts down while compiling
        assert view.line().endswith("| passes=1,seed=0 compiling")
        clock.t += 10  # 3 s startup, then 0.5 s per step
        _metrics(a, [{"step": 5, "loss": 2.5, "elapsed_s": 5.5},
                     {"step": 10, "loss": 2.0, "elapsed_s": 8.0}])  # fmt: skip
        view.refresh()
        assert "ETA 0m35s" in view.headline()  # its own 10 steps x 0.5 s, then 30 s queued
        assert "passes=1,seed=0 10/20 loss 2.0000 0.500 s/step" in view.line()
        view.log("start " + "x" * 120)  # a long event line
    lines = out.getvalue().splitlines()
    assert any(ln == "[sweep] start " + "x" * 120 for ln in lines)  # one line, not wrapped
    assert all(ln.startswith("[sweep] ") for ln in lines)
    assert "\x1b[" not in out.getvalue()  # plain lines, no terminal control codes
    table = io.StringIO()
    Console(file=table, width=200).print(view.render())
    assert "passes=1,seed=0" in table.getvalue() and "10/20" in table.getvalue()
    assert "0.500" in table.getvalue()  # the s/step column
    assert "passes=2,seed=0" not in table.getvalue()  # queued runs get no row


def test_a_resumed_run_compiles_until_it_logs_again(tmp_path):
    a = str(tmp_path / "a")
    _metrics(a, [{"step": 10, "loss": 2.0, "elapsed_s": 15.0},
                 {"step": 20, "loss": 1.5, "elapsed_s": 20.0}])  # fmt: skip
    run = progress.RunProgress("a", a, 40, progress.RUNNING)
    run.read()
    assert not run.logged and progress.SweepProgress._cells(run)[0] == "compiling"
    with open(os.path.join(a, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 25, "loss": 1.0, "elapsed_s": 9.0}) + "\n")
    run.read()
    assert run.logged and progress.SweepProgress._cells(run)[0] == "25/40"


# --- sweeps through submitit, with a stand-in trainer ---------------------------------


def _base(tmp_path, steps=10, **more):
    path = tmp_path / "base.py"
    fields = {"steps": steps, "passes": 1, "seed": 0, "log_every": 5, **more}
    path.write_text(
        textwrap.dedent(f"""
        from ml_collections import ConfigDict
        def get_config(arg=None):
            return ConfigDict({fields!r})
    """)
    )
    return grid.Sweep(config=str(path), axes={"passes": [1, 2]}, seeds=(0,), parallel=2)


def _run(sweep, workdir, kind="local", **kw):
    out = io.StringIO()
    launcher = launch.Launcher(kind, os.path.join(workdir, "submitit"), sweep.parallel)
    records = runner.run_sweep(sweep, workdir, launcher, train_command=FAKE_TRAIN,
                               console=Console(file=out, width=200), poll_s=0.1,
                               plain_every=0, **kw)  # fmt: skip
    return records, out.getvalue()


def _launches(run_dir):
    path = os.path.join(run_dir, "launches.txt")
    return open(path).read().count("\n") if os.path.exists(path) else 0


def test_local_submitit_sweep_resumes_and_skips_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.05")  # long enough to be seen running
    sweep, wd = _base(tmp_path), str(tmp_path / "sweep")
    records, out = _run(sweep, wd)
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert [r["eval"]["acc"] for r in records] == pytest.approx([0.6, 0.7])
    assert "2 of 2 runs to go, 2 at a time (local launcher)" in out
    assert "2/2 done" in out and "ETA" in out
    dirs = [r["run_dir"] for r in records]
    assert [os.path.basename(d) for d in dirs] == ["passes=1,seed=0", "passes=2,seed=0"]
    assert [_launches(d) for d in dirs] == [1, 1]
    assert "--config.passes=2" in open(os.path.join(dirs[1], runner.COMMAND_FILE)).read()
    jobs = [d for d in os.listdir(os.path.join(wd, "submitit")) if d.isdigit()]
    assert len(jobs) == 2  # one submitit job (a local process id) per run
    assert not os.path.exists(os.path.join(wd, lock.LOCK_FILE))  # released
    # Rerun: both skipped, nothing launched.
    _, out = _run(sweep, wd)
    assert out.count("skip finished") == 2 and [_launches(d) for d in dirs] == [1, 1]
    # An interrupted run (same config) is resumed; the finished one is still skipped.
    summary = os.path.join(dirs[1], "summary.json")
    json.dump({"status": "interrupted"}, open(summary, "w"))
    with open(os.path.join(dirs[1], "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 5, "loss": 0.2, "elapsed_s": 1.0}) + "\n")
    planned = runner.plan(sweep, os.path.join(wd, "runs"))
    assert [p.status for p in planned] == [runner.FINISHED, runner.RESUME]
    records, out = _run(sweep, wd)
    assert [_launches(d) for d in dirs] == [1, 2] and "start passes=2,seed=0 (resume" in out
    assert RunDir(dirs[1]).summary()["resumed_from"] == 5


def test_changed_config_is_refused_or_rerun_under_a_new_name(tmp_path):
    wd = str(tmp_path / "sweep")
    _run(_base(tmp_path, steps=10), wd, kind="debug")
    changed = _base(tmp_path, steps=20)  # the base config file now says 20 steps
    with pytest.raises(runner.ConfigChangedError, match=r"steps: 10 -> 20"):
        _run(changed, wd, kind="debug")
    runs_dir = os.path.join(wd, "runs")
    assert sorted(os.listdir(runs_dir)) == ["passes=1,seed=0", "passes=2,seed=0"]  # untouched
    assert not os.path.exists(os.path.join(wd, lock.LOCK_FILE))  # released on the error
    records, _ = _run(changed, wd, kind="debug", on_config_change="rerun")
    assert all(r["status"] == "completed" for r in records)
    new = [os.path.basename(r["run_dir"]) for r in records]
    assert all(",cfg=" in n for n in new) and len(os.listdir(runs_dir)) == 4
    assert all(RunDir(r["run_dir"]).config()["config"]["steps"] == 20 for r in records)
    assert RunDir(os.path.join(runs_dir, "passes=1,seed=0")).config()["config"]["steps"] == 10
    # The renamed runs are now the ones this config reuses.
    plan = runner.plan(changed, runs_dir, "rerun")
    assert [p.status for p in plan] == [runner.FINISHED] * 2
    # "continue": a change that only decides when the run ends (here steps) resumes the
    # original runs (once none recorded the new config exactly, as the renamed ones did);
    # a change of what is computed stays refused.
    for p in runner.plan(changed, runs_dir, "rerun"):
        shutil.rmtree(p.run_dir)
    plan = runner.plan(changed, runs_dir, "continue")
    assert [p.status for p in plan] == [runner.RESUME] * 2
    assert [os.path.basename(p.run_dir) for p in plan] == ["passes=1,seed=0", "passes=2,seed=0"]
    assert all("steps: 10 -> 20" in p.changed for p in plan)
    computed = _base(tmp_path, steps=10, batch_size=4)
    with pytest.raises(runner.ConfigChangedError, match=r"batch_size"):
        runner.check_no_changes(runner.plan(computed, runs_dir, "continue"))


def test_a_sweep_extended_then_killed_mid_extension_resumes_the_unfinished_runs(tmp_path):
    """steps raised from 10 to 20 with on_config_change="continue"; the sweep is killed
    after one run wrote its new config.json (steps=20) but before it ended, so its
    summary.json still says completed at steps=10. The rerun must resume it, and its
    results must be those of an uninterrupted sweep."""
    wd = str(tmp_path / "sweep")
    _run(_base(tmp_path, steps=10), wd, kind="debug")
    extended = _base(tmp_path, steps=20)
    killed = os.path.join(wd, "runs", "passes=2,seed=0")
    record = RunDir(killed).config()
    record["config"]["steps"] = 20  # what the extension's launch wrote first
    with open(os.path.join(killed, "config.json"), "w") as f:
        json.dump(record, f)
    assert RunDir(killed).summary()["status"] == "completed"  # the old run's summary
    assert not RunDir(killed).finished()
    plan = runner.plan(extended, os.path.join(wd, "runs"), "continue")
    assert [p.status for p in plan] == [runner.RESUME, runner.RESUME]
    records, out = _run(extended, wd, kind="debug", on_config_change="continue")
    assert "skip finished" not in out
    straight, _ = _run(extended, str(tmp_path / "straight"), kind="debug")
    strip = ("run_dir", "train_s", "wall_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in records] == [
        {k: v for k, v in r.items() if k not in strip} for r in straight
    ]
    assert all(RunDir(r["run_dir"]).summary()["step"] == 20 for r in records)


def test_runs_under_older_names_are_found_by_their_recorded_config(tmp_path):
    """Run directories named by the older scheme (by what they changed in the base config)
    are reused and resumed where they are, and shown by their short names."""
    wd = str(tmp_path / "sweep")
    runs_dir = os.path.join(wd, "runs")
    _run(_base(tmp_path), wd, kind="debug")
    os.rename(os.path.join(runs_dir, "passes=1,seed=0"), os.path.join(runs_dir, "base,seed=0"))
    old = os.path.join(runs_dir, "base,seed=0")
    plan = runner.plan(_base(tmp_path), runs_dir)
    assert [(p.name, p.run_dir, p.status) for p in plan] == [
        ("passes=1,seed=0", old, runner.FINISHED),
        ("passes=2,seed=0", os.path.join(runs_dir, "passes=2,seed=0"), runner.FINISHED),
    ]
    assert f"in {old}" in runner.describe(plan, 2)
    json.dump({"status": "interrupted"}, open(os.path.join(old, "summary.json"), "w"))
    records, out = _run(_base(tmp_path), wd, kind="debug")
    assert "start passes=1,seed=0 (resume" in out and _launches(old) == 2
    assert sorted(os.listdir(runs_dir)) == ["base,seed=0", "passes=2,seed=0"]
    assert [r["point"] for r in records] == ["passes=1", "passes=2"]
    # Another config is never taken for it: the N=1 run goes to its new name, afresh.
    plan = runner.plan(_base(tmp_path, steps=20), runs_dir)
    assert [(os.path.basename(p.run_dir), p.status) for p in plan] == [
        ("passes=1,seed=0", runner.NEW), ("passes=2,seed=0", runner.CHANGED),
    ]  # fmt: skip


def test_a_malformed_config_json_is_refused_naming_the_run(tmp_path):
    wd = str(tmp_path / "sweep")
    _run(_base(tmp_path), wd, kind="debug")
    broken = os.path.join(wd, "runs", "passes=2,seed=0")
    with open(os.path.join(broken, "config.json"), "w") as f:
        json.dump([1, 2], f)  # edited into a list
    planned = runner.plan(_base(tmp_path), os.path.join(wd, "runs"))
    assert [p.status for p in planned] == [runner.FINISHED, runner.CHANGED]
    with pytest.raises(runner.ConfigChangedError, match=rf"{broken}: config.json is not a run"):
        runner.check_no_changes(planned)


def test_a_sweep_refuses_a_workdir_another_live_sweep_holds(tmp_path):
    wd = tmp_path / "sweep"
    wd.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (wd / lock.LOCK_FILE).write_text(json.dumps({"pid": holder.pid}))
        with pytest.raises(lock.LockedError, match="another sweep"):
            _run(_base(tmp_path), str(wd), kind="debug")
        assert not (wd / "runs").exists()  # nothing planned or launched
    finally:
        holder.kill()
        holder.wait()
    records, _ = _run(_base(tmp_path), str(wd), kind="debug")  # stale now: taken over
    assert all(r["status"] == "completed" for r in records)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_a_second_sweep_on_a_live_sweeps_runs_dir_is_refused(tmp_path):
    """Sweep A runs (a separate process) with its runs under its own workdir; sweep B,
    given A's runs directory, must be refused while A lives, not launch on A's runs."""
    _base(tmp_path)  # writes base.py
    wd_a, wd_b = tmp_path / "a", str(tmp_path / "b")
    runs_a = str(wd_a / "runs")
    code = textwrap.dedent(f"""
        from experiments.sweeping import grid, launch, runner
        sweep = grid.Sweep(config={str(tmp_path / "base.py")!r}, axes={{"passes": [1, 2]}},
                           seeds=(0,), parallel=1)
        launcher = launch.Launcher("debug", {str(wd_a / "submitit")!r}, 1)
        runner.run_sweep(sweep, {str(wd_a)!r}, launcher, train_command={FAKE_TRAIN!r},
                         poll_s=0.05, plain_every=0)
    """)
    env = {**os.environ, "FAKE_STEP_S": "0.3", "PYTHONPATH": REPO}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        started = os.path.join(runs_a, "passes=1,seed=0", "launches.txt")
        for _ in range(600):  # until A launches its first run (3 s per run)
            if os.path.exists(started) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"sweep A ended early: {proc.stderr.read()[-2000:]}"
        with pytest.raises(lock.LockedError, match=rf"another sweep \(pid {proc.pid}"):
            _run(_base(tmp_path), wd_b, kind="debug", runs_dir=runs_a)
        assert not os.path.exists(os.path.join(wd_b, runner.RESULTS_FILE))
        assert _launches(os.path.join(runs_a, "passes=2,seed=0")) == 0  # B launched nothing
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    finally:
        proc.kill()
    records, out = _run(_base(tmp_path), wd_b, kind="debug", runs_dir=runs_a)  # A is done
    assert out.count("skip finished") == 2


def test_slurm_flags_reach_the_sbatch_file(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("srun", "sbatch"):
        (fake_bin / tool).write_text("#!/bin/sh\nexit 1\n")
        (fake_bin / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    opts = launch.SlurmOptions(partition="gpu", time_min=90, cpus_per_task=8, gpus_per_node=1,
                               account="proj", setup=("module load cuda",))  # fmt: skip
    launcher = launch.Launcher("slurm", str(tmp_path / "submitit"), parallel=3, slurm=opts)
    assert launcher.free_slots(5) == 5  # the whole array at once; Slurm runs 3 at a time
    text = launcher.executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--time=90", "--cpus-per-task=8", "--gpus-per-node=1",
                 "--account=proj", "module load cuda"):  # fmt: skip
        assert line in text, text


# --- the command line -----------------------------------------------------------------


def _sweep_cli(workdir, *extra, timeout=900):
    cmd = [sys.executable, "-m", "experiments.sweep", f"--workdir={workdir}",
           "--sweep=experiments/configs/sweeps.py:tiny", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_dry_run_lists_the_runs_with_seeds_from_the_command_line(tmp_path):
    wd = tmp_path / "dry"
    out = _sweep_cli(wd, "--dry_run", "--sweep.seeds=3,4", "--sweep.fixed.log_every=5")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [ln for ln in out.stdout.splitlines() if ",seed=" in ln]
    assert len(rows) == 4 and sum("seed=3 " in r for r in rows) == 2, out.stdout
    assert all("log_every=5" in r and " new " in r for r in rows)
    assert "4 of 4 runs to go, 2 at a time; estimated 1m00s" in out.stdout  # est_run_s=30
    assert not wd.exists()  # started nothing, wrote nothing
    one = _sweep_cli(wd, "--dry_run", "--sweep.seeds=7")
    assert one.returncode == 0 and one.stdout.count(",seed=7") == 2, one.stderr[-2000:]


def test_a_bad_sweep_is_refused_in_one_line_before_anything_is_written(tmp_path):
    out = _sweep_cli(tmp_path / "wd", "--dry_run", "--sweep.axes.eviction=hard,slidin")
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "eviction=slidin" in out.stderr and "eviction must be one of" in out.stderr
    out = _sweep_cli(tmp_path / "wd", "--launcher=slurm", "--sweep.axes.eviction=hard,sliding")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "--launcher=slurm needs Slurm's" in out.stderr and "--launcher=local" in out.stderr
    assert not (tmp_path / "wd").exists()


def test_sweep_help_lists_its_launcher_dry_run_and_slurm_flags():
    out = _sweep_cli("unused", "--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--launcher", "--[no]dry_run", "--slurm_partition", "--slurm_gpus_per_node",
                 "--on_config_change", "--runs_dir", "--sweep.axes.passes=(1, 2)"):  # fmt: skip
        assert flag in out.stdout, flag


def test_unknown_sweep_field_fails_before_training(tmp_path):
    out = _sweep_cli(tmp_path / "bad", "--sweep.axes.no_such_field=(1,2)")
    assert out.returncode != 0
    assert "no_such_field" in out.stdout + out.stderr
    assert not (tmp_path / "bad" / "runs").exists()
    out = _sweep_cli(tmp_path / "bad", "--dry_run", "--sweep.seedz=1")
    assert out.returncode != 0 and "seedz" in out.stderr


@pytest.mark.slow  # trains two tiny runs through submitit in subprocesses (~1-2 min)
def test_tiny_sweep_end_to_end_and_resume(tmp_path):
    wd = tmp_path / "sweep"
    out = _sweep_cli(wd)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [json.loads(x) for x in (wd / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(r["status"] == "completed" for r in lines)
    assert any(k.startswith("acc/d=") for k in lines[0]["eval"])
    assert "passes=2" in (wd / "summary.md").read_text()
    # Each run's summary.json names its machine, and the report names it once for both.
    here = machine.name(lines[0]["machines"][0])
    assert here.startswith(machine.describe()["cpu"])
    assert f"machines: {here}: 2 run(s)\n" in (wd / "summary.md").read_text()
    assert (wd / "sweep.png").stat().st_size > 1000
    assert "2/2 done" in out.stdout
    again = _sweep_cli(wd)
    assert again.returncode == 0
    assert again.stdout.count("skip finished") == 2


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


def test_the_convergence_sweeps_expand_and_share_their_runs():
    """capacity_map: 4 loads (window 2n) x N in {1, 2, 4} x 5 seeds with the stopping rule
    on; main_converged: its n = 16 load x N in {1, 4}, the very same runs."""
    from experiments.configs import sweeps
    from sleep_consolidation.training import run_config

    def runs(name):
        return {r.name: r for r in grid.Sweep.from_config(sweeps.get_config(name)).runs()}

    cmap, main = runs("capacity_map"), runs("main_converged")
    assert len(cmap) == 60 and len(main) == 10 and set(main) <= set(cmap)
    low, high = runs("capacity_map_low"), runs("capacity_map_high")
    assert set(low) | set(high) == set(cmap) and not set(low) & set(high) and set(main) <= set(low)
    new_main = runs("main_recall")  # the main job until 2026-12-04: the map's n = 8 slice
    assert len(new_main) == 10 and set(new_main) <= set(low)
    assert {dict(r.point)["task.num_pairs_values"] for r in new_main.values()} == {(8,)}
    n8 = runs("capacity_map_n8")  # N = 8 at the loads below 2 d_k, the same run settings
    assert len(n8) == 15 and not set(n8) & set(cmap)
    assert {
        (dict(r.point)["passes"], dict(r.point)["task.num_pairs_values"]) for r in n8.values()
    } == {(8, (16,)), (8, (8,)), (8, (4,))}
    assert next(iter(n8.values())).name.replace("passes=8,", "passes=1,") in cmap  # its N=1 pair
    points = [dict(r.point) for r in cmap.values()]
    assert {p["task.num_pairs_values"] for p in points} == {(4,), (8,), (16,), (32,)}
    assert all(p["task.window"] == 2 * p["task.num_pairs_values"][0] for p in points)
    assert {r.seed for r in cmap.values()} == {0, 1, 2, 3, 4}
    assert {dict(r.point)["passes"] for r in main.values()} == {1, 4}
    run = next(iter(main.values()))
    stored = dict(run.stored)
    assert stored["stop_patience"] == 4 and stored["task.num_pairs_values"] == (16,)
    assert "task.window" not in stored  # 32 is recall:capacity's own window: not a change
    assert all("/" not in name for name in cmap)  # each is one directory
    c = grid.load_config_file(
        "experiments/configs/recall.py",
        "capacity",
        grid.Sweep.from_config(sweeps.main_converged()).overrides(run),
    )
    assert c.task.window == 32 and c.stop_min_steps == 2000
    run_config.resolve_config(c)  # a valid run config, stopping fields included


def test_kept_runs_restored_on_a_fresh_machine_are_skipped_and_report_the_same(tmp_path):
    """keep/restore (a fresh machine loses every run directory): the restored finished
    runs are skipped, not retrained, and give the same records; an unfinished run is not
    kept; no checkpoint travels; an existing run directory is never overwritten."""
    from experiments.sweeping import keep

    sweep, wd = _base(tmp_path), str(tmp_path / "sweep")
    records, _ = _run(sweep, wd, kind="debug")
    runs_dir = os.path.join(wd, "runs")
    ckpt = os.path.join(runs_dir, "passes=1,seed=0", "checkpoints")
    os.makedirs(ckpt)  # stands for orbax's folder: must not be kept
    unfinished = os.path.join(runs_dir, "passes=3,seed=0")
    os.makedirs(unfinished)
    json.dump({"config": {"steps": 10}}, open(os.path.join(unfinished, "config.json"), "w"))
    kept_dir = str(tmp_path / "results" / "runs")
    kept, left = keep.keep(runs_dir, kept_dir)
    assert kept == ["passes=1,seed=0", "passes=2,seed=0"] and left == ["passes=3,seed=0"]
    assert sorted(os.listdir(os.path.join(kept_dir, "passes=1,seed=0"))) == sorted(
        ["config.json", "summary.json", "metrics.jsonl", runner.COMMAND_FILE]
    )

    fresh = str(tmp_path / "fresh")  # the next machine: no runs at all
    restored, left = keep.restore(kept_dir, os.path.join(fresh, "runs"))
    assert restored == kept and left == []
    again, out = _run(sweep, fresh, kind="debug")
    assert out.count("skip finished") == 2
    assert [_launches(r["run_dir"]) for r in again] == [0, 0]  # nothing started here
    assert [r["eval"] for r in again] == [r["eval"] for r in records]
    # Restoring again leaves the existing directories alone.
    assert keep.restore(kept_dir, os.path.join(fresh, "runs")) == ([], kept)
    with pytest.raises(FileNotFoundError, match="not a directory of run directories"):
        keep.keep(str(tmp_path / "nowhere"), kept_dir)
    # Nested layouts (the recipe study's runs/n=16/<recipe>/seed=0) keep their paths.
    nested = tmp_path / "nested"
    shutil.copytree(os.path.join(runs_dir, "passes=1,seed=0"), nested / "n=16" / "warm" / "seed=0")
    assert keep.keep(str(nested), str(tmp_path / "kept_nested")) == (["n=16/warm/seed=0"], [])
    # The command line: the same keep, and a clear error for a folder that is not there.
    cli_dir = str(tmp_path / "cli_kept")
    cmd = [sys.executable, "-m", "experiments.sweeping.keep", f"--runs_dir={runs_dir}"]
    done = subprocess.run([*cmd, f"--to={cli_dir}"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "kept 2 finished runs" in done.stdout, done.stderr
    assert "not finished, not kept: passes=3,seed=0" in done.stdout
    assert sorted(os.listdir(cli_dir)) == kept
    bad = subprocess.run([*cmd, "--restore", f"--to={tmp_path / 'nowhere'}"], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "is not a directory of run directories" in bad.stderr


def test_the_report_names_the_machines_and_the_runs_trained_on_several():
    amd = {"cpu": "AMD EPYC", "cpu_id": "AuthenticAMD/25/17", "isa": "avx512f", "cores": 2,
           "backend": "cpu", "device": "cpu", "jax": "0.10.2"}  # fmt: skip
    intel = {**amd, "cpu": "Intel Xeon", "cpu_id": "GenuineIntel/6/85"}
    records = [
        {"run_dir": "/r/passes=1,seed=0", "machines": [amd]},
        {"run_dir": "/r/passes=4,seed=0", "machines": [amd]},
        {"run_dir": "/r/passes=4,seed=1", "machines": [amd, intel]},
        {"run_dir": "/r/passes=1,seed=1", "machines": None},  # a run from before machines
        # resumed from a checkpoint saved before machines were recorded: not "mixed"
        {"run_dir": "/r/passes=2,seed=0", "machines": [dict(machine.UNRECORDED), amd]},
    ]  # fmt: skip
    line = report.machines_line(records)
    amd_name = "AMD EPYC (AuthenticAMD/25/17, avx512f, 2 cores), cpu cpu, jax 0.10.2"
    assert line.startswith(f"machines: {amd_name}: 4 run(s); ")
    assert "Intel Xeon (GenuineIntel/6/85, avx512f, 2 cores), cpu cpu, jax 0.10.2: 1 run(s)" in line
    assert "unrecorded: 2 run(s)" in line
    assert line.endswith("(resumed elsewhere): passes=4,seed=1")
