"""Training: loss, optimizer split, train step, evaluation, config checks and the loop."""

from __future__ import annotations

import glob
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import attn_config, interrupted_at_batch, read_metrics, tiny_config

import sleep_consolidation as sc
from experiments.configs import depo, gsm, recall, rule110
from sleep_consolidation.tasks import Recall, make_task
from sleep_consolidation.training import (
    checkpointing,
    evaluation,
    optimizers,
    run_config,
    run_dir,
    train,
)
from sleep_consolidation.training.losses import masked_cross_entropy
from sleep_consolidation.training.train_step import (
    NonFiniteError,
    check_finite,
    init_train_state,
    make_train_step,
    train_step_from_config,
)

pytestmark = pytest.mark.usefixtures("compilation_cache")


# ---------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------


def test_masked_cross_entropy_ignores_unsupervised_positions():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 7))
    targets = jnp.arange(10).reshape(2, 5) % 7
    mask = jnp.array([[0, 1, 0, 1, 1], [0, 0, 0, 0, 1]], jnp.float32)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    want = jnp.sum(nll * mask) / 4
    np.testing.assert_allclose(masked_cross_entropy(logits, targets, mask), want, rtol=1e-6)
    poisoned = logits.at[0, 0].set(jnp.nan)  # unsupervised position
    np.testing.assert_allclose(masked_cross_entropy(poisoned, targets, mask), want, rtol=1e-6)
    assert masked_cross_entropy(logits, targets, jnp.zeros_like(mask)) == 0.0


def test_muon_labels_are_exactly_the_block_matrices():
    cfg = tiny_config(layout=("attn", "ssm"))
    params = jax.eval_shape(lambda: sc.init_params(cfg, jax.random.key(0)))
    labels = optimizers.muon_labels(params)
    assert labels.config == cfg
    got = {jax.tree_util.keystr(p): lab for p, lab in jax.tree_util.tree_leaves_with_path(labels)}
    matrices = {"wq", "wk", "wv", "wo", "wg", "wa", "wb", "w1", "w2"}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        key = jax.tree_util.keystr(path)
        name = getattr(path[-1], "key", getattr(path[-1], "name", None))
        want = "muon" if key.startswith(".blocks") and name in matrices else "adamw"
        assert got[key] == want, key
        if want == "muon":
            assert leaf.ndim == 2
    assert got[".embed"] == got[".unembed"] == "adamw"
    assert got[".blocks[1]['mixer']['conv']"] == "adamw"  # 2-D, but a depthwise filter
    assert sum(lab == "muon" for lab in got.values()) == 6 + 9  # attn: q k v o + MLP; ssm


def test_train_step_jits_once_and_splits_learning_rates():
    # The loop's own program (attn_config), so the session compiles it once.
    c = attn_config()
    spec = run_config.resolve_config(c)
    tx = optimizers.optimizer_from_config(c)
    params = sc.init_params(spec.model_config, jax.random.key(c.seed))
    state0 = jax.device_put(init_train_state(params, tx), jax.devices()[0])
    train_step = make_train_step(tx, window=spec.window, passes=c.passes,
                                       schedule=spec.schedule)  # fmt: skip
    state = state0
    for step in range(3):
        state, metrics = train_step(state, spec.task.batch(c.seed, step, c.batch_size))
        assert all(math.isfinite(float(v)) for v in metrics.values())
    assert train_step._cache_size() == 1  # no retrace on later calls
    assert int(state.step) == 3
    # AdamW at a fixed 5e-5 on the embedding: each Adam step moves a weight by <= ~lr.
    delta = jnp.abs(state.params.embed - state0.params.embed)
    assert 0 < float(delta.max()) <= 3 * 5e-5 * 1.01
    # Muon (lr 2e-3) on the block matrices moves them far more than that.
    w1 = jnp.abs(state.params.blocks[0]["w1"] - state0.params.blocks[0]["w1"])
    assert float(w1.max()) > 10 * 3 * 5e-5


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_truncated_gradients_run_and_differ_from_full():
    cfg = sc.ModelConfig(vocab_size=17, d_model=8, num_heads=1, layout=("ssm",), mlp_ratio=1,
                         rule="hebbian")  # fmt: skip
    task = make_task("recall", num_pairs_values=(2,), num_keys=8, num_values=8, window=4,
                     num_queries=2)  # fmt: skip
    batch = task.batch(0, 0, 2)
    tx = optimizers.make_optimizer("adamw")
    state = init_train_state(sc.init_params(cfg, jax.random.key(1)), tx)
    full = make_train_step(tx, window=4, passes=3)(state, batch)
    trunc = make_train_step(tx, window=4, passes=3, grad_passes=1)(state, batch)
    assert float(full[1]["loss"]) == float(trunc[1]["loss"])  # same forward
    assert math.isfinite(float(trunc[1]["grad_norm"]))
    assert float(full[1]["grad_norm"]) != float(trunc[1]["grad_norm"])


def test_evaluate_pads_the_last_chunk_without_changing_the_metric():
    cfg = sc.ModelConfig(vocab_size=17, d_model=16, num_heads=2, layout=("attn",))
    task = make_task("recall", num_pairs_values=(2, 4), num_keys=8, num_values=8, window=8,
                     num_queries=4)  # fmt: skip
    params = sc.init_params(cfg, jax.random.key(0))
    batch = task.eval_batch(0, 12)
    whole = evaluation.evaluate(params, task, batch, passes=2, batch_size=12)
    padded = evaluation.evaluate(params, task, batch, passes=2, batch_size=8)
    assert set(whole) == {"loss", "acc", "loss/d=2", "acc/d=2", "loss/d=4", "acc/d=4"}
    for k in whole:
        np.testing.assert_allclose(padded[k], whole[k], rtol=1e-5, err_msg=k)


def test_check_finite_names_step_and_quantity():
    check_finite(3, {"loss": 1.0, "grad_norm": 2.0})
    with pytest.raises(NonFiniteError, match=r"grad_norm .*at step 7"):
        check_finite(7, {"loss": 1.0, "grad_norm": float("inf")})
    with pytest.raises(NonFiniteError, match=r"loss .*at step 2"):
        check_finite(2, {"loss": float("nan"), "grad_norm": float("nan")})


# ---------------------------------------------------------------------------------------
# Config validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ({"task": {"name": "nope"}}, "unknown task 'nope'"),
        ({"task": {"name": "recall", "bogus": 1}}, "unknown knob"),
        ({"bogus": 1}, r"unknown config field\(s\) \['bogus'\]"),
        ({"passes": 0}, "passes"),
        ({"eviction": "soft"}, "eviction"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"layout": ("attn", "mlp")}, "block kind"),
        ({"rule": "nope"}, "nope"),
        ({"loop_blocks": (1, 5)}, "loop_blocks"),
        ({"remat": "all"}, "remat"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": -1.0}, "learning_rate"),
    ],
)
def test_invalid_config_is_refused_before_compiling(tmp_path, override, message):
    c = attn_config().to_dict()
    c.update(override)
    with pytest.raises(ValueError, match=message):
        run_config.resolve_config(c)
    with pytest.raises(ValueError, match="invalid config"):
        train.train_and_evaluate(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_missing_field_is_refused():
    c = attn_config().to_dict()
    del c["seed"]
    with pytest.raises(ValueError, match=r"missing field\(s\) \['seed'\]"):
        run_config.resolve_config(c)


@pytest.mark.parametrize("get_config", [rule110.get_config, depo.get_config, gsm.get_config,
                                        recall.get_config])  # fmt: skip
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_experiment_configs_resolve(get_config, arg):
    spec = run_config.resolve_config(get_config(arg))
    assert spec.model_config.vocab_size == spec.task.vocab_size
    assert spec.window == spec.task.default_window


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantity", [pytest.param("loss", marks=pytest.mark.slow), "grad_norm"])
def test_nan_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, quantity):
    if quantity == "loss":
        # An out-of-range token embeds as NaN; at the last position (an answer) the loss
        # turns NaN from step 5 on.
        original = Recall.batch

        def poisoned(self, seed, step, batch_size):
            b = original(self, seed, step, batch_size)
            if step >= 4:
                tokens = np.array(b.tokens)
                tokens[:, -1] = self.vocab_size
                b = b.replace(tokens=tokens)
            return b

        monkeypatch.setattr(Recall, "batch", poisoned)
    else:
        # A NaN gradient under a finite loss. (A NaN token at an evicted position once did
        # it, until the step stopped computing what no answer reads.) The step still
        # updates the params; the loop must refuse to keep that state.
        make_step = train_step_from_config

        def nan_grad_step(*args, **kwargs):
            step = make_step(*args, **kwargs)

            def poisoned_step(state, batch):
                new, metrics = step(state, batch)
                bad = jnp.where(state.step >= 4, jnp.nan, metrics["grad_norm"])
                return new, {**metrics, "grad_norm": bad}

            return poisoned_step

        monkeypatch.setattr(train, "train_step_from_config", nan_grad_step)
    workdir = str(tmp_path / "run")
    with pytest.raises(NonFiniteError, match=rf"non-finite {quantity} .*at step 5") as e:
        train.train_and_evaluate(attn_config(), workdir)
    assert (e.value.step, e.value.quantity) == (5, quantity)
    with checkpointing.Checkpointer(workdir) as ckpt:
        assert ckpt.all_steps() == [2, 4]
    params = checkpointing.load_params(workdir)
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
    with open(os.path.join(workdir, run_dir.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["status"] == "failed" and summary["failed_step"] == 5
    assert summary["last_checkpoint"] == 4


def test_workdir_with_a_different_model_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(attn_config(steps=2), workdir)
    config_path = os.path.join(workdir, checkpointing.CONFIG_FILE)
    with open(config_path) as f:
        saved = f.read()
    conflicts = [
        ({"d_model": 64}, "model.d_model: saved 32, requested 64"),
        ({"task": {**attn_config().task.to_dict(), "num_keys": 9}}, "task.num_keys"),
        ({"optimizer": "adamw"}, "optimizer: saved 'muon'"),
    ]
    for override, message in conflicts:
        with pytest.raises(run_dir.ConfigConflictError, match=message):
            train.train_and_evaluate(attn_config(**override), workdir)
        with open(config_path) as f:
            assert f.read() == saved  # not overwritten
    summary = train.train_and_evaluate(attn_config(steps=4), workdir)  # more steps: fine
    assert summary["step"] == 4 and summary["resumed_from"] == 2
    assert [m["step"] for m in read_metrics(workdir)] == [2, 4]


def _loss_falls(get_config, tmp_path):
    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(get_config("tiny"), workdir)
    losses = [m["loss"] for m in read_metrics(workdir)]
    assert summary["status"] == "completed"
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    return summary


def test_loss_falls_on_tiny_recall(tmp_path):
    summary = _loss_falls(recall.get_config, tmp_path)
    chance = 1 / 8
    assert summary["eval"]["acc"] > 2 * chance, summary["eval"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "get_config",
    [rule110.get_config, depo.get_config, gsm.get_config],
    ids=["rule110", "depo", "gsm"],
)
def test_loss_falls_on_tiny_task(tmp_path, get_config):
    _loss_falls(get_config, tmp_path)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_eval_passes_logs_other_n(tmp_path):
    # The tiny recall program of test_loss_falls_on_tiny_recall (attn + GDN, trained at
    # N=2), so only the N=1 and N=3 evals compile anew; with a GDN block N matters.
    c = recall.get_config("tiny")
    c.update(steps=2, log_every=2, eval_every=2, checkpoint_every=2, eval_passes=(1, 3))
    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(c, workdir)
    (line,) = read_metrics(workdir)
    params = checkpointing.load_params(workdir)
    task = run_config.resolve_config(c).task
    batch = task.eval_batch(c.seed, c.eval_size)
    for m, prefix, short in [(2, "eval/", ""), (1, "eval_N1/", "N1/"), (3, "eval_N3/", "N3/")]:
        want = evaluation.evaluate(params, task, batch, passes=m, batch_size=c.eval_batch_size)
        for k, v in want.items():
            got_line, got_summary = line[prefix + k], summary["eval"][short + k]
            if math.isnan(v):
                assert got_line is None and got_summary is None, k
            else:
                np.testing.assert_allclose([got_line, got_summary], v, rtol=1e-5, err_msg=k)
    assert len(summary["eval"]) == 3 * len(want)
    assert line["eval_N1/loss"] != line["eval_N3/loss"]


def _tensorboard_scalars(workdir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(workdir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_match_the_metrics_and_survive_a_resume(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    config = attn_config(log_every=1, checkpoint_every=2)
    # batch 3 makes step 4: steps 1-3 logged, step 2 checkpointed
    with interrupted_at_batch(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, workdir)
    train.train_and_evaluate(config, workdir)  # resumes from step 2; steps 3-6 again
    events = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    assert len(events) == 2, events  # one file per start

    scalars = _tensorboard_scalars(workdir)
    lines = read_metrics(workdir)
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "grad_norm", "token_acc", "lr"):
        # Step 3 was logged by both starts; TensorBoard keeps only the second one's.
        assert [s for s, _ in scalars[f"train/{key}"]] == [1, 2, 3, 4, 5, 6], key
        np.testing.assert_allclose(
            [v for _, v in scalars[f"train/{key}"]], [m[key] for m in lines], rtol=1e-6
        )
    for key, tag in [("eval/acc", "eval/acc"), ("eval/loss/d=2", "eval/loss/d_2")]:
        assert [s for s, _ in scalars[tag]] == [6], tag
        np.testing.assert_allclose(scalars[tag][0][1], lines[-1][key], rtol=1e-6)
    # A kill mid-write tears the last event record; the reader skips it and reads the rest.
    newest = max(events, key=os.path.getmtime)
    os.truncate(newest, os.path.getsize(newest) - 5)
    assert [s for s, _ in _tensorboard_scalars(workdir)["train/loss"]][:5] == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------
# Run identity: what a rerun of a workdir may change
# ---------------------------------------------------------------------------------------


def _saved_run(tmp_path, config, checkpoint_step=4):
    """A workdir as a run of `config` leaves it (config.json and a finished checkpoint
    step directory), without training."""
    workdir = tmp_path / "run"
    (workdir / checkpointing.CHECKPOINT_DIR / str(checkpoint_step)).mkdir(parents=True)
    record = run_dir.run_record(config, run_config.resolve_config(config))
    with open(workdir / checkpointing.CONFIG_FILE, "w") as f:
        json.dump(record, f)
    return str(workdir)


def _record(config):
    return run_dir.run_record(config, run_config.resolve_config(config))


@pytest.mark.parametrize(
    "override, field",
    [
        ({"passes": 3}, "passes: saved 2, requested 3"),
        ({"seed": 1}, "seed: saved 0, requested 1"),
        ({"batch_size": 4}, "batch_size: saved 8, requested 4"),
        ({"window": 4}, "window: saved 8, requested 4"),  # saved: the task's window (None)
        ({"eviction": "sliding"}, "eviction"),
        ({"reinject_embedding": True}, "reinject_embedding"),
        ({"learning_rate": 1e-3}, "learning_rate"),
        ({"remat": "pass"}, "remat"),
        ({"estimator": "truncated", "grad_passes": 1}, "estimator"),
        ({"eval_size": 32}, "eval_size"),
    ],
)
def test_a_change_of_what_is_computed_is_refused_unless_allowed(tmp_path, override, field):
    workdir = _saved_run(tmp_path, attn_config())
    record = _record(attn_config(**override))
    with pytest.raises(run_dir.ConfigConflictError, match=field) as e:
        run_dir.check_workdir(workdir, record)
    assert "--allow_config_change" in str(e.value)
    allowed = run_dir.check_workdir(workdir, record, allow_config_change=True)
    (change,) = allowed["config_changes"]
    assert change["step"] == 4 and change["allowed"] is True
    assert field.split(":")[0] in change["fields"]
    assert allowed["config"] == record["config"]  # config.json takes the new values


def test_steps_cadence_and_eval_passes_may_change_freely(tmp_path):
    workdir = _saved_run(tmp_path, attn_config())
    free = dict(steps=12, log_every=3, eval_every=4, checkpoint_every=3, keep_checkpoints=1,
                eval_passes=(1, 3), eval_batch_size=8)  # fmt: skip
    record = run_dir.check_workdir(workdir, _record(attn_config(**free)))
    (change,) = record["config_changes"]  # recorded all the same
    assert change["allowed"] is False and set(change["fields"]) == set(free)
    same = run_dir.check_workdir(workdir, _record(attn_config()))
    assert "config_changes" not in same


def test_steps_may_not_change_under_a_cosine_schedule(tmp_path):
    # Cosine decays over `steps`: more steps would raise the LR of the steps still to run.
    workdir = _saved_run(tmp_path, attn_config(lr_schedule="cosine"))
    with pytest.raises(run_dir.ConfigConflictError, match="steps: saved 6, requested 12"):
        run_dir.check_workdir(workdir, _record(attn_config(lr_schedule="cosine", steps=12)))


def test_model_changes_are_refused_even_when_allowed_and_no_checkpoint_starts_afresh(tmp_path):
    workdir = _saved_run(tmp_path, attn_config())
    record = _record(attn_config(d_model=64))
    with pytest.raises(run_dir.ConfigConflictError, match="model.d_model: saved 32"):
        run_dir.check_workdir(workdir, record, allow_config_change=True)
    os.rmdir(os.path.join(workdir, checkpointing.CHECKPOINT_DIR, "4"))
    assert run_dir.check_workdir(workdir, record) == record  # nothing trained: a fresh start


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_allow_config_change_continues_the_run_and_records_the_change(tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(attn_config(steps=2), workdir)
    changed = attn_config(steps=4, learning_rate=1e-3)
    with pytest.raises(run_dir.ConfigConflictError, match="learning_rate"):
        train.train_and_evaluate(changed, workdir)
    summary = train.train_and_evaluate(changed, workdir, allow_config_change=True)
    assert summary["resumed_from"] == 2 and summary["step"] == 4
    saved = checkpointing.read_run_config(workdir)
    assert saved["config"]["learning_rate"] == 1e-3
    (change,) = saved["config_changes"]
    assert change == {"step": 2, "allowed": True,
                      "fields": {"learning_rate": [2e-3, 1e-3], "steps": [2, 4]}}  # fmt: skip
    train.train_and_evaluate(changed, workdir)  # the same config again: no new entry
    assert len(checkpointing.read_run_config(workdir)["config_changes"]) == 1


def test_lowering_steps_below_a_saved_checkpoint_is_refused(tmp_path):
    """A 16-step model must not stand as a completed 8-step run."""
    workdir = _saved_run(tmp_path, attn_config(steps=16), checkpoint_step=16)
    with pytest.raises(run_dir.ConfigConflictError,
                       match=r"checkpoint at step 16, past steps=8.*steps >= 16"):  # fmt: skip
        train.Trainer(attn_config(steps=8), workdir)
    run_dir.check_workdir(workdir, _record(attn_config(steps=16)))  # the same steps: fine


def test_a_summary_is_finished_only_for_the_config_it_ended_under(tmp_path):
    from sleep_consolidation.training import run_dir

    record = _record(attn_config(steps=8))
    done = {"status": "completed", "steps": 8, "config_digest": run_dir.config_digest(
        record["config"])}  # fmt: skip
    assert run_dir.summary_mismatch(done, record) is None
    extended = _record(attn_config(steps=16))  # config.json of an extension cut short
    assert "steps=8 but config.json asks for steps=16" in run_dir.summary_mismatch(done, extended)
    changed = _record(attn_config(steps=8, seed=1))  # an allowed change cut short
    assert "another config" in run_dir.summary_mismatch(done, changed)
    assert run_dir.summary_mismatch({**done, "status": "interrupted"}, record)
    assert run_dir.summary_mismatch(done, None)


def test_train_and_evaluate_refuses_a_run_directory_another_live_process_trains(tmp_path):
    """The run lock is the library's: a notebook (or any caller) that would train a run
    another process trains is refused before writing anything."""
    import subprocess
    import sys

    from sleep_consolidation.training import run_lock

    workdir = tmp_path / "run"
    workdir.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as holder:
        try:
            (workdir / run_lock.TRAIN_LOCK_FILE).write_text(json.dumps({"pid": holder.pid}))
            with pytest.raises(run_lock.LockedError, match=f"training run \\(pid {holder.pid}"):
                train.train_and_evaluate(attn_config(steps=2), str(workdir))
        finally:
            holder.kill()
    assert not (workdir / checkpointing.CONFIG_FILE).exists()
    # Its holder dead, the lock is stale: taken over, and released when the run ends.
    train.train_and_evaluate(attn_config(steps=2), str(workdir))
    assert not (workdir / run_lock.TRAIN_LOCK_FILE).exists()


def test_a_run_recorded_before_an_optional_field_or_task_knob_existed_stays_finished(tmp_path):
    """config.json and summary.json as older code wrote them (no wake_passes, no Rule 110
    probe_radius; the digest over that config): still finished, and resumable."""
    from experiments.configs import rule110

    config = rule110.get_config("tiny")
    config.update(layout=("attn",), steps=6, batch_size=8, eval_size=16, eval_batch_size=16)
    workdir = _saved_run(tmp_path, config, checkpoint_step=6)
    with open(os.path.join(workdir, checkpointing.CONFIG_FILE)) as f:
        old = json.load(f)
    del old["config"]["wake_passes"], old["config"]["task"]["probe_radius"]
    del old["task"]["probe_radius"]
    with open(os.path.join(workdir, checkpointing.CONFIG_FILE), "w") as f:
        json.dump(old, f)
    raw = run_dir._digest(old["config"])
    assert raw != run_dir.config_digest(old["config"])  # the completed config hashes apart
    done = {"status": "completed", "steps": 6, "config_digest": raw}
    assert run_dir.summary_mismatch(done, old) is None
    # Resuming under today's config (the fields at their defaults) is no change.
    assert "config_changes" not in run_dir.check_workdir(workdir, _record(config))
    # A knob really changed is still refused.
    config.task.probe_radius = 1
    with pytest.raises(run_dir.ConfigConflictError, match="task.probe_radius"):
        run_dir.check_workdir(workdir, _record(config))
