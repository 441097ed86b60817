"""Training many passes: `init_from` (warm start), `passes_ramp_steps` (a curriculum over
N) and `pass_stats_size` (per-pass norms and recall at every eval)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import sleep_consolidation as sc
from sleep_consolidation.training import checkpointing, curriculum, run_config, train
from sleep_consolidation.training.losses import masked_cross_entropy
from sleep_consolidation.training.run_log import tensorboard_tag
from tests.conftest import attn_config, interrupted_at_batch, read_metrics, reaped

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The runs of one test (straight, interrupted, resumed) compile the same steps: once.
pytestmark = pytest.mark.usefixtures("compilation_cache")


def _leaves(params):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def _assert_bit_identical(a, b):
    for i, (x, y) in enumerate(zip(_leaves(a), _leaves(b), strict=True)):
        assert np.array_equal(x, y), f"leaf {i} differs"


# --- the curriculum's schedule ---------------------------------------------------------------


def test_passes_at_ramps_linearly_in_n_and_then_holds():
    got = [curriculum.passes_at(i, 4, 3000) for i in (0, 999, 1000, 1999, 2000, 2999, 3000, 9999)]
    assert got == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [curriculum.passes_at(i, 4, None) for i in (0, 5)] == [4, 4]
    assert [curriculum.passes_at(i, 4, 0) for i in (0, 5)] == [4, 4]
    assert curriculum.passes_at(0, 1, 100) == 1
    assert curriculum.passes_used(6000, 4, 3000) == (1, 2, 3, 4)
    assert curriculum.passes_used(500, 4, 3000) == (1,)  # the run ends inside the first stage
    assert curriculum.passes_used(10, 4, None) == (4,)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"passes_ramp_steps": -1}, "passes_ramp_steps"),
        ({"passes_ramp_steps": 2.5}, "passes_ramp_steps"),
        ({"passes_ramp_steps": 4, "passes": 2, "grad_passes": 1}, "grad_passes"),
        ({"init_from": ""}, "init_from"),
        ({"init_from": 3}, "init_from"),
        ({"pass_stats_size": 0}, "pass_stats_size"),
        ({"pass_stats_size": 17}, "exceeds eval_size"),
    ],
)
def test_bad_recipe_fields_are_refused_by_name(override, message):
    config = {**attn_config().to_dict(), **override}  # a mapping: no ConfigDict type check
    with pytest.raises(ValueError, match=message):
        run_config.resolve_config(config)


# --- init_from ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A trained attention-only run to start from (6 steps)."""
    workdir = str(tmp_path_factory.mktemp("init") / "source")
    train.train_and_evaluate(attn_config(), workdir)
    return workdir


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_init_from_starts_from_exactly_the_source_parameters(source_run, tmp_path):
    config = attn_config(init_from=source_run, passes=2, steps=1, log_every=1, eval_every=1)
    workdir = str(tmp_path / "warm")
    train.train_and_evaluate(config, workdir)
    # The first step's loss is the source model's loss on batch 0 (before any update).
    spec = run_config.resolve_config(config)
    source = checkpointing.load_params(source_run)
    batch = spec.task.batch(config.seed, 0, config.batch_size)
    logits = sc.forward(source, batch.tokens, spec.window, 2, schedule=spec.schedule)
    want = float(masked_cross_entropy(logits, batch.targets, batch.loss_mask))
    got = read_metrics(workdir)[0]["loss"]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    cold = str(tmp_path / "cold")
    train.train_and_evaluate(attn_config(passes=2, steps=1, log_every=1, eval_every=1), cold)
    assert abs(read_metrics(cold)[0]["loss"] - want) > 1e-3  # a fresh init scores otherwise
    with open(os.path.join(workdir, checkpointing.CONFIG_FILE)) as f:
        assert json.load(f)["config"]["init_from"] == source_run  # recorded


@pytest.mark.parametrize(
    "override, message",
    [
        ({"d_model": 16}, "d_model: source 32, this run 16"),
        ({"layout": ("attn", "ssm")}, "layout"),
        ({"rule": "delta"}, "rule"),
    ],
)
def test_init_from_refuses_a_source_of_another_model_before_compiling(
    source_run, tmp_path, monkeypatch, override, message
):
    def no_compile(*a, **k):
        raise AssertionError("compiled before refusing")

    monkeypatch.setattr(train, "train_step_from_config", no_compile)
    config = attn_config(init_from=source_run, **override)
    with pytest.raises(ValueError, match=message):
        train.Trainer(config, str(tmp_path / "warm"))


def test_init_from_refuses_a_directory_without_a_run_or_checkpoint(source_run, tmp_path):
    with pytest.raises(ValueError, match="not a run directory"):
        train.Trainer(attn_config(init_from=str(tmp_path)), str(tmp_path / "warm"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with open(os.path.join(source_run, checkpointing.CONFIG_FILE)) as f:
        (empty / checkpointing.CONFIG_FILE).write_text(f.read())
    with pytest.raises(ValueError, match="no checkpoint"):
        train.Trainer(attn_config(init_from=str(empty)), str(tmp_path / "warm"))
    with pytest.raises(ValueError, match="own workdir"):
        train.Trainer(attn_config(init_from=source_run), source_run)


# --- the curriculum in the loop ------------------------------------------------------------


def _interrupt_then_resume(monkeypatch, make_config, workdir, at_batch):
    """Train `make_config()` in `workdir`, interrupted when batch `at_batch` (0-based) is
    drawn, then rerun it to the end: the rerun's summary."""
    with interrupted_at_batch(monkeypatch, at_batch), pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(make_config(), workdir)
    return train.train_and_evaluate(make_config(), workdir)


def _ramp_config(**overrides):
    # N = 1 for steps 1-2, 2 for steps 3-4, 3 for steps 5-6; a checkpoint every 2 steps.
    return attn_config(passes=3, passes_ramp_steps=4, log_every=1, **overrides)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_ramp_uses_its_n_at_each_step_compiles_once_per_n_and_resumes_bit_exactly(
    tmp_path, monkeypatch
):
    trainer = train.Trainer(_ramp_config(), str(tmp_path / "straight"))
    trainer.run()
    assert [m["passes"] for m in read_metrics(tmp_path / "straight")] == [1, 1, 2, 2, 3, 3]
    assert sorted(trainer.train_steps) == [(1, "hard"), (2, "hard"), (3, "hard")]
    assert all(step._cache_size() == 1 for step in trainer.train_steps.values())

    # The checkpoint of step 2 holds N = 1 training; N = 2 starts at step 3.
    resumed = str(tmp_path / "resumed")
    summary = _interrupt_then_resume(monkeypatch, _ramp_config, resumed, at_batch=3)
    assert summary["resumed_from"] == 2
    _assert_bit_identical(
        checkpointing.load_params(tmp_path / "straight"), checkpointing.load_params(resumed)
    )
    assert [m["passes"] for m in read_metrics(resumed)] == [1, 1, 2, 2, 3, 3]


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_the_stopping_rule_waits_for_the_ramp(tmp_path):
    # patience 1 with an impossible improvement threshold stops at the first eval allowed.
    config = _ramp_config(steps=8, eval_every=1, stop_patience=1, stop_min_delta=10.0)
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["stop_reason"] == "converged"
    assert summary["step"] == 4  # the first eval once N has reached `passes`


# --- the hard-eviction warm-up of a sliding-eviction run -----------------------------------


def test_eviction_at_warms_up_with_hard_then_holds():
    assert [curriculum.eviction_at(i, "sliding", 3) for i in range(5)] == ["hard"] * 3 + [
        "sliding"
    ] * 2
    assert curriculum.eviction_at(0, "sliding", None) == "sliding"
    assert curriculum.eviction_at(0, "sliding", 0) == "sliding"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"hard_eviction_steps": 4},
            r"warm-up for sliding eviction, but the run's eviction is 'hard'",
        ),
        ({"hard_eviction_steps": -1, "eviction": "sliding"}, "hard_eviction_steps must be"),
    ],
)
def test_a_bad_hard_eviction_warm_up_is_refused_before_compiling(overrides, message):
    with pytest.raises(ValueError, match=message):
        run_config.resolve_config(attn_config(**overrides))


def _warmup_config(**overrides):
    # Hard eviction for steps 1-3, then sliding; a checkpoint every 2 steps; N = 2.
    fields = dict(layout=("attn", "ssm"), passes=2, eviction="sliding", hard_eviction_steps=3,
                  log_every=1)  # fmt: skip
    return attn_config(**{**fields, **overrides})


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_warm_up_uses_hard_eviction_first_compiles_once_per_mode_and_resumes_bit_exactly(
    tmp_path, monkeypatch
):
    trainer = train.Trainer(_warmup_config(), str(tmp_path / "straight"))
    trainer.run()
    assert [m["hard_eviction"] for m in read_metrics(tmp_path / "straight")] == [1, 1, 1, 0, 0, 0]
    assert sorted(trainer.train_steps) == [(2, "hard"), (2, "sliding")]
    assert all(step._cache_size() == 1 for step in trainer.train_steps.values())
    # Not a no-op: the same run without the warm-up trains other parameters.
    plain = str(tmp_path / "plain")
    train.train_and_evaluate(_warmup_config(hard_eviction_steps=None), plain)
    a, b = checkpointing.load_params(tmp_path / "straight"), checkpointing.load_params(plain)
    assert any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )

    # The checkpoint of step 4 holds three hard steps and one sliding.
    resumed = str(tmp_path / "resumed")
    summary = _interrupt_then_resume(monkeypatch, _warmup_config, resumed, at_batch=4)
    assert summary["resumed_from"] == 4
    _assert_bit_identical(
        checkpointing.load_params(tmp_path / "straight"), checkpointing.load_params(resumed)
    )


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_the_stopping_rule_waits_for_the_eviction_warm_up(tmp_path):
    config = _warmup_config(steps=8, eval_every=1, stop_patience=1, stop_min_delta=10.0)
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["stop_reason"] == "converged" and summary["step"] == 3


# --- per-pass statistics -------------------------------------------------------------------


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_pass_stats_are_finite_and_logged_to_metrics_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    config = attn_config(layout=("attn", "ssm"), passes=3, pass_stats_size=8, eval_every=3)
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    evals = [m for m in read_metrics(workdir) if "eval/acc" in m]
    assert [m["step"] for m in evals] == [3, 6]
    names = [f"pass_stats/{k}/p{p}" for k in ("fast_norm", "h_norm", "recall_cosine")
             for p in (1, 2, 3)]  # fmt: skip
    for m in evals:
        for name in names:
            assert np.isfinite(m[name]), (name, m[name])
        assert -1.0 <= m["pass_stats/recall_cosine/p3"] <= 1.0
    acc = event_accumulator.EventAccumulator(workdir)
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for name in names:
        tag = tensorboard_tag(name)
        assert tag in tags, (tag, tags)
        assert [e.step for e in acc.Scalars(tag)] == [3, 6], tag


# --- a killed warm-started run resumes itself, not its source ---------------------------------


def _launch(args, log_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "experiments.train", *args], cwd=REPO, env=env,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


@pytest.mark.slow
def test_a_killed_warm_started_run_resumes_bit_exactly(source_run, tmp_path):
    args = [
        "--config=experiments/configs/recall.py:tiny", "--config.layout=('attn',)",
        "--config.steps=8", "--config.batch_size=8", "--config.log_every=1",
        "--config.checkpoint_every=2", "--config.eval_every=8", "--config.eval_size=16",
        "--config.eval_batch_size=16", f"--config.init_from={source_run}",
    ]  # fmt: skip
    straight = str(tmp_path / "straight")
    with reaped(_launch([*args, f"--workdir={straight}"], straight + ".log")) as proc:
        assert proc.wait(600) == 0
    killed = str(tmp_path / "killed")
    metrics = os.path.join(killed, "metrics.jsonl")
    with reaped(_launch([*args, f"--workdir={killed}"], killed + ".log")) as proc:
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 600:
            if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 5:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL, "the run ended before its kill"
    with reaped(_launch([*args, f"--workdir={killed}"], killed + ".log")) as proc:
        assert proc.wait(600) == 0
    with open(os.path.join(killed, "summary.json")) as f:
        assert json.load(f)["resumed_from"] >= 2  # its own checkpoint, not the source
    _assert_bit_identical(checkpointing.load_params(straight), checkpointing.load_params(killed))


# --- normalisation between passes ----------------------------------------------------------


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_normalize_sleep_input_keeps_the_features_from_growing_pass_after_pass():
    from sleep_consolidation.analysis import diagnostics

    cfg = sc.ModelConfig(vocab_size=16, d_model=32, num_heads=2, layout=("attn", "ssm"),
                         rule="delta")  # fmt: skip
    params = sc.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (4, 24), 0, 16)
    grow = diagnostics.per_pass_statistics(params, tokens, 8, 4, reinject_embedding=True)
    flat = diagnostics.per_pass_statistics(
        params, tokens, 8, 4, reinject_embedding=True, normalize_sleep_input=True
    )
    assert grow["h_norm"][3] > 3 * grow["h_norm"][0]  # h + e, pass after pass
    assert flat["h_norm"][3] < 1.3 * flat["h_norm"][0]
    # The wake pass reads the embeddings either way (later windows' memory differs a little).
    assert flat["h_norm"][0] == pytest.approx(grow["h_norm"][0], rel=0.01)
    with pytest.raises(ValueError, match="normalize_sleep_input must be a bool"):
        sc.Schedule(normalize_sleep_input=1)
