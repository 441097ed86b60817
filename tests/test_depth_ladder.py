"""The Rule 110 depth ladder's measurements: per-query accuracy, the constant-answer floor
and the ladder config (results/RESULTS.md, "Depth")."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

import sleep_consolidation as sc
from sleep_consolidation.tasks import make_task
from sleep_consolidation.training import evaluation


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_per_query_accuracy_is_the_token_accuracy_at_each_query():
    task = make_task("rule110", num_states=4, width=8, t_values=(2,))
    cfg = sc.ModelConfig(
        vocab_size=task.vocab_size, d_model=16, num_heads=2, layout=("attn", "ssm")
    )
    params = sc.init_params(cfg, jax.random.key(3))
    batch = task.eval_batch(0, 40)
    got = evaluation.evaluate(params, task, batch, window=8, passes=2, batch_size=16)
    logits = sc.forward(params, batch.tokens, 8, 2)
    pred = np.asarray(jax.numpy.argmax(logits, -1))
    for i, p in enumerate(task.answer_positions):
        want = np.mean(pred[:, p] == np.asarray(batch.targets)[:, p])
        np.testing.assert_allclose(got[f"acc/Q{i + 1}"], want, rtol=1e-6, err_msg=f"Q{i + 1}")
    # Exact match needs every query right: never above the worst query.
    assert got["acc"] <= min(got[f"acc/Q{i}"] for i in range(1, 5)) + 1e-9
    # A task without named answer positions reports no per-position keys.
    recall = make_task("recall", num_pairs_values=(2,), num_keys=8, num_values=8, window=4,
                       num_queries=2)  # fmt: skip
    rcfg = sc.ModelConfig(vocab_size=recall.vocab_size, d_model=16, num_heads=2, layout=("attn",))
    keys = evaluation.evaluate(sc.init_params(rcfg, jax.random.key(0)), recall,
                               recall.eval_batch(0, 8), passes=1)  # fmt: skip
    assert not any(k.startswith("acc/Q") for k in keys)


def test_constant_answer_accuracy_is_the_majority_answer():
    task = make_task("rule110", num_states=2, width=8, t_values=(0, 3))
    batch = task.eval_batch(0, 512)
    got = evaluation.constant_answer_accuracy(task, batch)
    targets = np.asarray(batch.targets)[:, list(task.answer_positions)]
    depth = np.asarray(batch.depth)[:, task.answer_positions[0]]
    majority = np.array([np.bincount(targets[:, j]).argmax() for j in range(targets.shape[1])])
    ok = (targets == majority).all(axis=1)
    assert got["acc"] == pytest.approx(ok.mean())
    assert got["acc/d=3"] == pytest.approx(ok[depth == 3].mean())
    # At t = 0 a bit is a fair coin: two bits right by a constant guess ~ 1/4.
    assert got["acc/d=0"] == pytest.approx(0.25, abs=0.06)


def test_depth_config_is_the_ladder_model():
    from experiments.configs import rule110
    from sleep_consolidation.training import run_config

    c = rule110.get_config("depth")
    c.task.t_values = (6,)
    spec = run_config.resolve_config(c)
    assert spec.task.width == 16 and spec.task.num_states == 4 and spec.task.depths == (6,)
    assert spec.model_config.layout == ("attn", "ssm", "attn", "ssm")
    with pytest.raises(ValueError, match=r"':tiny', ':cpu', ':depth'"):
        rule110.get_config("deep")


def _fake_run(tmp_path, t, n, seed, acc, stop="converged", **changes):
    """A completed run record of the ladder with its config.json on disk (`changes`: a
    control's config fields, e.g. wake_passes=4)."""
    import json

    suffix = "".join(map(str, changes.values())).replace(os.sep, "_")  # a path: init_from
    run_dir = tmp_path / f"t{t}_n{n}_s{seed}{suffix}"
    run_dir.mkdir()
    task = {"name": "rule110", "num_states": 4, "width": 16, "t_values": [t],
            "boundary": "periodic"}  # fmt: skip
    (run_dir / "config.json").write_text(
        json.dumps(
            {"config": {"passes": n, "seed": seed, "eval_size": 64, **changes}, "task": task}
        )
    )
    ev = {"acc": acc, **{f"acc/Q{i}": min(1.0, acc + 0.1) for i in range(1, 5)}}
    return {"run_dir": str(run_dir), "seed": seed, "status": "completed", "eval": ev,
            "stop_reason": stop, "stopped_at": 3000, "steps_to_90pct": None,
            "train_s": 100.0}  # fmt: skip


def test_depth_ladder_report_gains_frontier_and_control(tmp_path):
    from experiments import depth_ladder

    accs = {  # (t, N) -> acc per seed 0, 1
        (0, 1): (1.0, 0.99), (1, 1): (0.9, 0.8), (2, 1): (0.6, 0.3), (4, 1): (0.1, 0.1),
        (1, 4): (0.95, 0.9), (2, 4): (0.7, 0.6), (4, 4): (0.55, 0.2),
    }  # fmt: skip
    records = [
        _fake_run(tmp_path, t, n, s, a, stop="step_cap" if a < 0.5 else "converged")
        for (t, n), per_seed in accs.items()
        for s, a in enumerate(per_seed)
    ]
    # Two controls at t = 2: online depth and more steps (N = 1 both).
    records += [_fake_run(tmp_path, 2, 1, s, a, wake_passes=4) for s, a in enumerate((0.5, 0.7))]
    records += [_fake_run(tmp_path, 2, 1, s, 0.6, steps=23000) for s in (0, 1)]
    records += [_fake_run(tmp_path, 2, 4, s, 0.9, eviction="sliding", hard_eviction_steps=1000)
                for s in (0, 1)]  # fmt: skip
    text = depth_ladder.report(records)
    assert "seed 0: 1.000, seed 1: 0.990; holds" in text
    # t = 2, N = 4 against N = 1: differences +0.1 and +0.3 -> mean +0.2, two positive.
    assert "| 2 | 4 | 1 | 0,1 | 0.650 | 0.450 | +0.200 [" in text and "2+ 0- 0=" in text
    # The online control against N = 1 (-0.1, +0.4), and N = 4 against it (+0.2, -0.1).
    assert "| 2 | 1 (4 wake runs) | 1 | 0,1 | 0.600 | 0.450 | +0.150 [" in text
    assert "| 2 | 4 | 1 (4 wake runs) | 0,1 | 0.650 | 0.600 | +0.050 [" in text
    assert "| 2 | 4 | 1 (cap 23000) | 0,1 | 0.650 | 0.600 | +0.050 [" in text
    # Frontiers: N = 1 seed 0 reaches t = 2, seed 1 t = 1; N = 4 seed 0 t = 4, seed 1 t = 2.
    assert "| 1 | 0:2 1:1 | 1.50 (2) |" in text
    assert "| 4 | 0:4 1:2 | 3.00 (2) |" in text
    assert "**capped** at 3000" in text
    assert "| 2 | 4 (sliding after 1000 hard) | 1 | 0,1 | 0.900 | 0.450 | +0.450 [" in text
    # A failed control says the ladder does not count.
    records[1]["eval"]["acc"] = 0.5
    assert "does not count" in depth_ladder.report(records)
    assert "Attention-only control" not in text and "Wide retrieval" not in text
    # The wide retrieval control: t = 0, any bit within 6; below 0.95 on a seed it fails.
    probe = [_fake_run(tmp_path, 0, 1, s, a, probe=6) for s, a in enumerate((0.99, 0.6))]
    for r in probe:
        cfg = os.path.join(r["run_dir"], "config.json")
        record = json.loads(open(cfg).read())
        record["task"]["probe_radius"] = record["config"].pop("probe")
        open(cfg, "w").write(json.dumps(record))
    text = depth_ladder.report(records + probe)
    assert (
        "Wide retrieval control (1 (any bit within 6), t = 0): seed 0: 0.990, seed 1: 0.600;"
        in text
    )
    assert "may be storage, not computation" in text
    assert "seed 0: 1.000, seed 1: 0.500; **fails**" in text  # the plain t = 0 control apart
    # An attention-only model: at the floor it holds; well above it, the task leaks.
    attn = [_fake_run(tmp_path, 2, 1, s, 0.0, layout=["attn"] * 4) for s in (0, 1)]
    floor = depth_ladder.constant_floor(attn[0]["run_dir"])
    attn[0]["eval"]["acc"] = attn[1]["eval"]["acc"] = floor
    assert "seed 0: +0.000" in depth_ladder.report(attn) and "; holds." in depth_ladder.report(attn)
    attn[1]["eval"]["acc"] = 0.9
    assert "above 0.05): the ladder does not count" in depth_ladder.report(attn)
    with pytest.raises(ValueError, match="no completed runs"):
        depth_ladder.report([])


def test_warm_started_arms_are_named_by_their_source_and_paired_with_each_other(tmp_path):
    """A warm start (init_from) is its own arm, named by its source run less the seed (the
    same on any machine, the source there or not); a warm N = 4 is paired with N = 1
    warm-started the same way, as well as with the plain N = 1."""
    from experiments import depth_ladder

    sources = [_fake_run(tmp_path, 4, 1, s, a) for s, a in enumerate((0.9, 0.2))]
    src = str(tmp_path / "easy" / "passes=1,task.t_values=(4),seed={}")
    fourk = {"steps": 4000}
    warm = [
        _fake_run(tmp_path, 4, n, s, a, init_from=src.format(s), **fourk)
        for n, per_seed in ((4, (1.0, 0.6)), (1, (0.95, 0.2)))
        for s, a in enumerate(per_seed)
    ]
    arm = "4 (cap 4000, warm from passes=1,task.t_values=(4))"
    assert depth_ladder.depth_and_arm(warm[0]) == (4, arm)
    recipe = _fake_run(tmp_path, 4, 4, 0, 0.5, init_from="runs/n=16/today_N1/seed=0")
    assert depth_ladder.depth_and_arm(recipe) == (4, "4 (warm from today_N1)")
    text = depth_ladder.report(sources + warm)
    # warm N = 4 - warm N = 1: +0.05 and +0.4; warm N = 4 - plain N = 1: +0.1 and +0.4.
    same = "1 (cap 4000, warm from passes=1,task.t_values=(4))"
    assert f"| 4 | {arm} | {same} | 0,1 | 0.800 | 0.575 | +0.225 [" in text
    assert f"| 4 | {arm} | 1 | 0,1 | 0.800 | 0.550 | +0.250 [" in text


@pytest.mark.parametrize(
    "name",
    [
        "rule110_search", "depo_search", "rule110_depth", "rule110_confirm", "rule110_controls",
        "rule110_online", "rule110_attention_only", "rule110_sliding", "depo_search_long",
        "depo_frontier", "rule110_probe", "depo_frontier_confirm", "depo_compute_matched",
        "rule110_easy", "depo_slice", "depo_slice_confirm", "rule110_easy_warm",
    ],
)  # fmt: skip
def test_the_search_sweeps_plan_valid_runs(name, tmp_path):
    """Every run of the new search sweeps resolves through the training validation (what
    --dry_run checks), with one t per Rule 110 model and the intended layouts."""
    from experiments.configs import depth_sweeps, sweeps
    from experiments.sweeping import grid, runner

    planned = runner.plan(grid.Sweep.from_config(sweeps.get_config(name)), str(tmp_path))
    runner.check_configs(planned)
    if name == "rule110_search":
        ts = sorted({tuple(p.config["task"]["t_values"]) for p in planned})
        assert ts == [(t,) for t in depth_sweeps.DEPTH_LADDER] and len(planned) == 12
        assert {p.config["passes"] for p in planned} == {1}
    elif name == "rule110_depth":  # t* first, N = 2 last: the decisive pairs finish first
        cells = [(tuple(p.config["task"]["t_values"]), p.config["passes"]) for p in planned]
        assert cells[:10] == [((depth_sweeps.T_STAR,), 1)] * 5 + [((depth_sweeps.T_STAR,), 4)] * 5
        assert len(set(cells)) == 9 and len(planned) == 45
    elif name == "rule110_easy":  # a subset of rule110_depth's runs, t = 4, N in {1, 4}
        depth = runner.plan(
            grid.Sweep.from_config(sweeps.get_config("rule110_depth")), str(tmp_path)
        )
        strip = lambda c: {k: v for k, v in c.items() if k != "seed"}  # noqa: E731
        assert {str(strip(p.config)) for p in planned} <= {str(strip(p.config)) for p in depth}
        cells = {(tuple(p.config["task"]["t_values"]), p.config["passes"]) for p in planned}
        assert cells == {((4,), 1), ((4,), 4)} and len(planned) == 10
    elif name == "rule110_easy_warm":  # each run starts from its seed's rule110_easy N = 1
        easy_dir = os.path.dirname(depth_sweeps.EASY_N1_RUN)  # the README's runs dir
        easy = runner.plan(grid.Sweep.from_config(sweeps.get_config("rule110_easy")), easy_dir)
        sources = {p.run.seed: p.run_dir for p in easy if p.config["passes"] == 1}
        assert {p.config["init_from"] for p in planned if p.run.seed == 3} == {sources[3]}
        assert all(p.config["init_from"] == sources[p.run.seed] for p in planned)
        assert {(p.config["passes"], p.config["steps"]) for p in planned} == {(1, 4000), (4, 4000)}
    elif name == "rule110_confirm":
        assert sorted({p.run.seed for p in planned}) == [5, 6, 7, 8, 9]
        assert {p.config["passes"] for p in planned} == {1, 4}
    elif name == "rule110_controls":
        steps = {p.config["steps"] for p in planned if "ssm" in p.config["layout"]}
        assert steps == {depth_sweeps.COMPUTE_MATCHED_STEPS}
        assert {tuple(p.config["task"]["t_values"]) for p in planned} == {(depth_sweeps.T_STAR,)}
    elif name == "rule110_online":  # the online-depth control, paired by seed with N = 4
        assert {(p.config["passes"], p.config["wake_passes"]) for p in planned} == {(1, 4)}
        assert sorted(p.run.seed for p in planned) == [0, 1, 2, 3, 4]
    elif name == "rule110_attention_only":  # the controls' arm, under the same run names
        controls = runner.plan(
            grid.Sweep.from_config(sweeps.get_config("rule110_controls")), str(tmp_path)
        )
        assert {p.run.name for p in planned} < {p.run.name for p in controls}
        assert {tuple(p.config["layout"]) for p in planned} == {("attn",) * 4}
    elif name == "rule110_sliding":  # N = 4 with and without the warm-up, N = 1 without
        arms = [(p.config["passes"], p.config["hard_eviction_steps"]) for p in planned]
        assert arms[:10] == [(4, 0)] * 5 + [(4, depth_sweeps.HARD_WARMUP_STEPS)] * 5
        assert set(arms[10:]) == {(1, 0)} and len(planned) == 15
        assert {p.config["eviction"] for p in planned} == {"sliding"}
    elif name == "rule110_probe":  # t = 0, any of the 13 bits an answer at t* reads
        knobs = {(p.config["task"]["probe_radius"], tuple(p.config["task"]["t_values"]))
                 for p in planned}  # fmt: skip
        assert knobs == {(depth_sweeps.T_STAR, (0,))}
    elif name == "depo_search_long":  # the 4-block sizes, no stopping rule, 12000 steps
        assert {(len(p.config["layout"]), p.config["d_model"]) for p in planned} == {
            (4, 32),
            (4, 64),
        }
        assert {(p.config["steps"], p.config["stop_patience"]) for p in planned} == {(12000, None)}
    elif name in ("depo_slice", "depo_slice_confirm"):  # k <= 2, a fixed 4000 steps
        knobs = {(p.config["passes"], p.config["task"]["max_hops"], p.config["steps"],
                  p.config["stop_patience"]) for p in planned}  # fmt: skip
        assert knobs == {(1, 2, 4000, None), (4, 2, 4000, None)}
        seeds = [0, 1, 2, 3, 4] if name == "depo_slice" else [5, 6, 7, 8, 9]
        assert sorted({p.run.seed for p in planned}) == seeds and len(planned) == 10
    elif name == "depo_frontier":  # N = 4 before N = 2, a fixed budget for every N
        assert [p.config["passes"] for p in planned][::5] == [1, 4, 2]
        assert {(p.config["steps"], p.config["stop_patience"]) for p in planned} == {(8000, None)}
    elif name == "depo_frontier_confirm":  # depo_frontier's runs, N in {1, 4}, seeds 5-9
        frontier = runner.plan(
            grid.Sweep.from_config(sweeps.get_config("depo_frontier")), str(tmp_path)
        )
        strip = lambda c: {k: v for k, v in c.items() if k != "seed"}  # noqa: E731
        assert {str(strip(p.config)) for p in planned} <= {str(strip(p.config)) for p in frontier}
        assert [p.config["passes"] for p in planned][::5] == [1, 4]
        assert sorted({p.run.seed for p in planned}) == [5, 6, 7, 8, 9] and len(planned) == 10
    elif name == "depo_compute_matched":  # new N = 1 at N = 4's FLOPs; the rest reused
        frontier = runner.plan(
            grid.Sweep.from_config(sweeps.get_config("depo_frontier")), str(tmp_path)
        )
        strip = lambda c: {k: v for k, v in c.items() if k != "seed"}  # noqa: E731
        old = {str(strip(p.config)) for p in frontier}
        new = [p for p in planned if str(strip(p.config)) not in old]
        assert {(p.config["passes"], p.config["steps"]) for p in new} == {(1, 20_000)}
        assert sorted(p.run.seed for p in new) == [0, 1, 2, 3, 4] and len(planned) == 15
        assert planned[0].config["steps"] == 20_000  # the new runs first
        cfg = sweeps.get_config(name)
        assert dict(cfg.baseline) == {"passes": 1, "steps": 20_000}
    else:
        assert {(len(p.config["layout"]), p.config["d_model"]) for p in planned} == {
            (2, 32),
            (4, 32),
            (4, 64),
        }


def test_the_command_writes_the_report_from_results_jsonl(tmp_path):
    import json
    import subprocess
    import sys

    records = [_fake_run(tmp_path, t, 1, s, a) for t, a in ((0, 1.0), (2, 0.8)) for s in (0, 1)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = subprocess.run(
        [sys.executable, "-m", "experiments.depth_ladder", f"--results={results}",
         f"--out={tmp_path / 'report'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "report" / "depth_ladder.md").read_text()
    assert text.startswith("# Rule 110 depth ladder") and "seed 0: 1.000, seed 1: 1.000" in text
    none = subprocess.run([sys.executable, "-m", "experiments.depth_ladder"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert none.returncode != 0 and "give --results" in none.stderr
    (tmp_path / "empty_runs").mkdir()  # a sweep whose runs are all still training
    empty = subprocess.run([sys.executable, "-m", "experiments.depth_ladder",
                            f"--runs={tmp_path / 'empty_runs'}"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert empty.returncode != 0 and "no completed runs in" in empty.stderr
    assert "Traceback" not in empty.stderr


def test_a_frontier_is_a_bound_where_the_seed_skipped_the_depths_that_pin_it():
    from experiments import depth_ladder

    ladder = (1, 2, 4, 6, 8)
    assert depth_ladder.seed_frontier({1: 0.9, 2: 0.9, 4: 0.9, 6: 0.2}, ladder, 0.5) == "4"
    assert depth_ladder.seed_frontier({1: 0.2, 6: 0.9}, ladder, 0.5) == "0"
    assert depth_ladder.seed_frontier({6: 0.1}, ladder, 0.5) == "<6"  # 1-4 untrained
    assert depth_ladder.seed_frontier({6: 0.9}, ladder, 0.5) == ">=6"  # 8 untrained
    assert depth_ladder.seed_frontier({4: 0.9, 6: 0.9, 8: 0.9}, ladder, 0.5) == "8"
    assert depth_ladder.seed_frontier({4: 0.9, 6: 0.1, 8: 0.9}, ladder, 0.5) == "4"


def test_a_report_reads_run_directories_while_the_sweeps_run(tmp_path):
    import json

    from experiments import depth_ladder

    done = _fake_run(tmp_path, 6, 1, 0, 0.2)
    running = _fake_run(tmp_path, 6, 4, 0, 0.0)
    for r, status in ((done, "completed"), (running, "running")):
        summary = {"status": status, "eval": r["eval"], "stop_reason": "step_cap"}
        (tmp_path / os.path.basename(r["run_dir"]) / "summary.json").write_text(json.dumps(summary))
    (records,) = [depth_ladder.records_from_runs([str(tmp_path)])]
    assert [r["run_dir"] for r in records] == [done["run_dir"]]
    assert records[0]["eval"]["acc"] == 0.2 and records[0]["seed"] == 0
    with pytest.raises(FileNotFoundError, match="--runs"):
        depth_ladder.records_from_runs([str(tmp_path / "nope")])
