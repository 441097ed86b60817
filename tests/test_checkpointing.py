"""Checkpoints: exact resume, fallback past a cut-off or corrupt step, load_params and the
MemoryState round trip."""

from __future__ import annotations

import errno
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import attn_config, interrupted_at_batch, read_metrics

import sleep_consolidation as sc
from sleep_consolidation.training import (
    checkpointing,
    optimizers,
    run_config,
    run_dir,
    train,
    train_step,
)

pytestmark = pytest.mark.usefixtures("compilation_cache")


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_resume_after_interruption_is_bit_identical(tmp_path, monkeypatch):
    config = attn_config(steps=20, checkpoint_every=5, log_every=1, eval_every=10,
                         lr_schedule="cosine", warmup_steps=3)  # fmt: skip
    straight = str(tmp_path / "straight")
    train.train_and_evaluate(config, straight)

    resumed = str(tmp_path / "resumed")
    with interrupted_at_batch(monkeypatch, 10), pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, resumed)
    with open(os.path.join(resumed, run_dir.SUMMARY_FILE)) as f:
        first = json.load(f)
    assert first["status"] == "interrupted" and first["train_s"] > 0
    # As a kill -9 (or a machine gone between sessions) would leave it: no summary of the
    # first process; its training time comes from the checkpoint resumed from.
    os.remove(os.path.join(resumed, run_dir.SUMMARY_FILE))
    summary = train.train_and_evaluate(config, resumed)
    assert summary["resumed_from"] == 10 and summary["step"] == 20
    # The run's training time counts both processes; train_s is the last one's.
    assert summary["train_s_total"] == pytest.approx(first["train_s"] + summary["train_s"])

    assert_trees_equal(checkpointing.load_params(straight), checkpointing.load_params(resumed))
    a, b = read_metrics(straight), read_metrics(resumed)
    assert [m["step"] for m in b] == list(range(1, 21))  # nothing logged twice
    assert [m["loss"] for m in a] == [m["loss"] for m in b]
    assert a[-1]["eval/acc"] == b[-1]["eval/acc"]


# Orbax's failed read of the corrupt step leaves an asyncio callback that fires after its
# event loop closed; harmless.
@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_resume_falls_back_past_a_corrupt_latest_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(attn_config(steps=6), workdir)
    final = checkpointing.load_params(workdir)
    # A save cut off mid-write leaves Orbax's temporary directory behind...
    os.makedirs(os.path.join(workdir, "checkpoints", "8.orbax-checkpoint-tmp-1234", "params"))
    # ...and the latest complete step has a truncated array file.
    for f in glob.glob(os.path.join(workdir, "checkpoints", "6", "params", "**", "d", "*"),
                       recursive=True):  # fmt: skip
        with open(f, "r+b") as fh:
            fh.truncate(16)
    summary = train.train_and_evaluate(attn_config(steps=6), workdir)
    assert summary["resumed_from"] == 4 and summary["step"] == 6
    assert os.listdir(os.path.join(workdir, checkpointing.CORRUPT_DIR))[0].startswith("6-")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
    assert_trees_equal(checkpointing.load_params(workdir), final)  # same data, same steps


def _tiny_state(seed):
    cfg = sc.ModelConfig(vocab_size=5, d_model=8, num_heads=1, layout=("attn", "ssm"))
    tx = optimizers.make_optimizer("adamw")
    state = train_step.init_train_state(sc.init_params(cfg, jax.random.key(seed)), tx)
    return state.replace(step=jnp.asarray(seed, jnp.int32)), tx


def test_checkpointer_keeps_the_last_few_and_restores_into_an_abstract_state(tmp_path):
    with checkpointing.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.restore(jax.eval_shape(lambda: _tiny_state(0)[0])) is None
        for s in (1, 2, 3):
            ckpt.save(_tiny_state(s)[0])
        ckpt.wait()
        assert ckpt.all_steps() == [2, 3]
        restored = ckpt.restore(jax.eval_shape(lambda: _tiny_state(0)[0]))
    assert isinstance(restored, train_step.TrainState)
    assert restored.params.config == _tiny_state(3)[0].params.config
    assert_trees_equal(restored, _tiny_state(3)[0])


def test_load_params_rebuilds_the_model_config(tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(attn_config(steps=2), workdir)
    params = checkpointing.load_params(workdir)
    assert isinstance(params, sc.Params)
    assert params.config == run_config.resolve_config(attn_config()).model_config
    with checkpointing.Checkpointer(workdir) as ckpt:
        assert_trees_equal(params, ckpt.restore_params(jax.eval_shape(lambda: params), 2))
    with pytest.raises(FileNotFoundError):
        checkpointing.load_params(str(tmp_path / "nothing"))


def test_memory_state_round_trip(tmp_path):
    cfg = sc.ModelConfig(vocab_size=5, d_model=8, num_heads=2, layout=("attn", "ssm"))
    like = sc.init_state(cfg, batch_size=2, window=4, eviction="sliding")
    rng = np.random.default_rng(0)
    state = jax.tree_util.tree_map(
        lambda x: x if x.dtype != jnp.float32 else rng.normal(size=x.shape).astype(np.float32),
        like,
    )
    valid = jnp.array([True, False, True])  # a prefix with a gap: restored as saved
    state = state.replace(
        pos=jnp.asarray(3, jnp.int32),
        prefix={b: (k, v, valid) for b, (k, v, _) in state.prefix.items()},
    )
    checkpointing.save_memory_state(tmp_path / "mem", state)
    loaded = checkpointing.load_memory_state(tmp_path / "mem", like=like)
    assert_trees_equal(loaded, state)
    assert loaded.schedule == state.schedule and loaded.rope_base == state.rope_base
    with pytest.raises(ValueError, match="static fields"):
        checkpointing.load_memory_state(tmp_path / "mem", like=sc.init_state(cfg, 2, 4))
    with pytest.raises(FileExistsError):
        checkpointing.save_memory_state(tmp_path / "mem", state)


def test_systematic_restore_failure_moves_nothing(tmp_path, monkeypatch):
    """A failure that hits every step (here: a model shape that does not match) is not
    corruption: it raises and leaves every finished checkpoint in place. Relative workdir
    paths work (Orbax itself needs absolute ones)."""
    workdir = tmp_path / "run"
    train.train_and_evaluate(attn_config(), str(workdir))
    monkeypatch.chdir(tmp_path)
    params = sc.load_params("run")  # relative path
    assert params.config.layout == ("attn",)
    steps_before = sorted(os.listdir(workdir / checkpointing.CHECKPOINT_DIR))
    wrong = jax.eval_shape(
        lambda: sc.init_params(
            params.config.__class__(**{**params.config.__dict__, "d_model": 64}), jax.random.key(0)
        )
    )
    with checkpointing.Checkpointer("run", async_save=False) as ckpt, pytest.raises(ValueError):
        ckpt.restore_params(wrong)
    assert sorted(os.listdir(workdir / checkpointing.CHECKPOINT_DIR)) == steps_before
    assert not (workdir / checkpointing.CORRUPT_DIR).exists()


# ---------------------------------------------------------------------------------------
# Torn files and I/O errors
# ---------------------------------------------------------------------------------------


def test_truncate_jsonl_drops_a_torn_last_line_and_later_steps(tmp_path, caplog):
    path = str(tmp_path / "metrics.jsonl")
    with open(path, "w") as f:
        f.write('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    run_dir.truncate_jsonl(path, 2)
    with open(path) as f:
        assert f.read() == '{"step": 1}\n{"step": 2}\n'
    assert "dropped 1 unreadable line(s) (line 4: unparseable" in caplog.text
    with open(path, "a") as f:  # a whole last line that only lost its newline is kept
        f.write('{"step": 3}')
    run_dir.truncate_jsonl(path, 5)
    with open(path) as f:
        assert f.read() == '{"step": 1}\n{"step": 2}\n{"step": 3}\n'


def test_resume_survives_a_torn_metrics_line(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(attn_config(steps=4), workdir)
    with open(os.path.join(workdir, run_dir.METRICS_FILE), "a") as f:
        f.write('{"step": 5, "loss": 0.12')  # a kill in the middle of an append
    summary = train.train_and_evaluate(attn_config(steps=6), workdir)
    assert summary["resumed_from"] == 4 and summary["status"] == "completed"
    assert [m["step"] for m in read_metrics(workdir)] == [2, 4, 6]
    assert "unreadable line" in caplog.text


class _FailingWrites:
    """Makes os.open (the metrics append) and open (summary.json's temporary file) raise
    ENOSPC for the matching paths: a full disk, for the writes of a run only."""

    def __init__(self, monkeypatch, metrics_after=None, summary=False):
        self.metrics_after, self.summary, self.appends = metrics_after, summary, 0
        self._os_open, self._open = os.open, open
        monkeypatch.setattr(os, "open", self.os_open)
        monkeypatch.setattr("builtins.open", self.open)

    def _full(self, path):
        return OSError(errno.ENOSPC, "No space left on device", path)

    def os_open(self, path, *args, **kwargs):
        if self.metrics_after is not None and str(path).endswith(run_dir.METRICS_FILE):
            self.appends += 1
            if self.appends > self.metrics_after:
                raise self._full(path)
        return self._os_open(path, *args, **kwargs)

    def open(self, path, *args, **kwargs):
        if self.summary and str(path).endswith(run_dir.SUMMARY_FILE + ".tmp"):
            raise self._full(path)
        return self._open(path, *args, **kwargs)


def test_a_full_disk_stops_the_run_naming_the_path_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    metrics = os.path.join(workdir, run_dir.METRICS_FILE)
    _FailingWrites(monkeypatch, metrics_after=1)  # the line of step 2 is written, not 4
    with pytest.raises(run_dir.RunIOError, match="No space left") as e:
        train.train_and_evaluate(attn_config(), workdir)
    assert f"I/O error on {metrics}" in str(e.value)
    assert "last checkpoint (step 2) is kept" in str(e.value)
    assert e.value.errno == errno.ENOSPC
    with open(os.path.join(workdir, run_dir.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["status"] == "failed" and metrics in summary["error"]
    assert summary["last_checkpoint"] == 2
    monkeypatch.undo()  # space freed: the same command resumes
    summary = train.train_and_evaluate(attn_config(), workdir)
    assert summary["resumed_from"] == 2 and summary["status"] == "completed"
    assert [m["step"] for m in read_metrics(workdir)] == [2, 4, 6]


def test_a_failing_summary_write_does_not_hide_the_first_error(tmp_path, monkeypatch, caplog):
    workdir = str(tmp_path / "run")
    _FailingWrites(monkeypatch, metrics_after=0, summary=True)
    with pytest.raises(run_dir.RunIOError, match=run_dir.METRICS_FILE):
        train.train_and_evaluate(attn_config(steps=2), workdir)
    assert "could not also write the summary" in caplog.text
    assert run_dir.SUMMARY_FILE + ".tmp" in caplog.text


def test_a_failing_summary_write_of_a_finished_run_is_raised(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    _FailingWrites(monkeypatch, summary=True)
    with pytest.raises(run_dir.RunIOError, match=rf"I/O error on .*{run_dir.SUMMARY_FILE}\.tmp"):
        train.train_and_evaluate(attn_config(steps=2), workdir)
    with checkpointing.Checkpointer(workdir) as ckpt:
        assert ckpt.all_steps() == [2]  # the checkpointer was still closed cleanly


# ---------------------------------------------------------------------------------------
# Non-finite and unreadable checkpoints; readers are read-only
# ---------------------------------------------------------------------------------------


def _overwrite_with_nan_params(workdir, step):
    """Replaces checkpoint `step` with one whose parameters are NaN (what garbled array
    bytes can decode to), written by Orbax itself so that it reads back cleanly."""
    abstract = jax.eval_shape(
        lambda: train_step.init_train_state(
            sc.init_params(
                run_config.resolve_config(attn_config()).model_config, jax.random.key(0)
            ),
            optimizers.make_optimizer("muon"),
        )
    )
    with checkpointing.Checkpointer(workdir, async_save=False) as ckpt:
        state = ckpt.restore(abstract)
        import shutil

        shutil.rmtree(os.path.join(workdir, checkpointing.CHECKPOINT_DIR, str(step)))
        ckpt._manager.reload()
        nan = jax.tree_util.tree_map(lambda x: jnp.full_like(x, jnp.nan), state.params)
        bad = state.replace(params=nan, step=jnp.asarray(step, jnp.int32))
        ckpt._manager.save(step, args=ocp_args(bad), force=True)


def ocp_args(state):
    import orbax.checkpoint as ocp

    return ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
    )


def test_a_non_finite_checkpoint_is_skipped_by_readers_and_quarantined_by_the_run(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(attn_config(), workdir)  # checkpoints 2, 4, 6
    final = checkpointing.load_params(workdir)
    with checkpointing.Checkpointer(workdir, read_only=True) as ckpt:
        at_4 = ckpt.restore_params(jax.eval_shape(lambda: final), 4)
    _overwrite_with_nan_params(workdir, 6)
    ckpt_dir = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
    # A reader: never NaN parameters, never a move; the step asked for is named.
    assert_trees_equal(checkpointing.load_params(workdir), at_4)
    assert "checkpoint step 6" in caplog.text and "non-finite" in caplog.text
    with pytest.raises(checkpointing.CheckpointError, match=rf"{ckpt_dir}/6\): .*non-finite"):
        checkpointing.load_params(workdir, step=6)
    assert sorted(os.listdir(ckpt_dir)) == ["2", "4", "6"]
    # The run: step 6 is moved aside, the run resumes from 4 and ends finite.
    summary = train.train_and_evaluate(attn_config(), workdir)
    assert summary["resumed_from"] == 4 and summary["status"] == "completed"
    assert os.listdir(os.path.join(workdir, checkpointing.CORRUPT_DIR))[0].startswith("6-")
    assert not checkpointing.non_finite_leaves(checkpointing.load_params(workdir))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_run_whose_every_checkpoint_is_unreadable_fails_naming_them(tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(attn_config(steps=2), workdir)
    # Garbled: the items' JSON metadata (Orbax then fails in a JSON parser, naming no file).
    for f in glob.glob(os.path.join(workdir, "checkpoints", "2", "*", "_METADATA")):
        with open(f, "r+b") as fh:
            fh.write(b"\x00garbage")
    ckpt_dir = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
    with pytest.raises(
        checkpointing.CheckpointError, match=rf"{ckpt_dir}/2\).*move {ckpt_dir} aside"
    ):
        train.train_and_evaluate(attn_config(steps=4), workdir)
    with open(os.path.join(workdir, run_dir.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["status"] == "failed" and f"{ckpt_dir}/2" in summary["error"]
    assert os.listdir(ckpt_dir) == ["2"]  # it may be systematic: nothing is moved
    with pytest.raises(checkpointing.CheckpointError, match=rf"{ckpt_dir}/2\)"):
        checkpointing.load_params(workdir)


def test_non_finite_parameters_are_never_saved(tmp_path):
    state, _ = _tiny_state(1)
    with checkpointing.Checkpointer(tmp_path) as ckpt:
        ckpt.save(state)
        bad = state.replace(
            step=jnp.asarray(2, jnp.int32),
            params=jax.tree_util.tree_map(lambda x: x.at[0].set(jnp.inf), state.params),
        )
        with pytest.raises(train_step.NonFiniteError, match=r"non-finite parameters .* at step 2"):
            ckpt.save(bad)
        ckpt.wait()
        assert ckpt.all_steps() == [1]


def test_load_params_never_deletes_or_moves_anything_in_a_live_run(tmp_path):
    """What a notebook sees while a run saves step 6: Orbax's temporary directory of that
    save. A reader must not clean it up (the save would fail), nor quarantine a step."""
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(attn_config(steps=4), workdir)
    in_flight = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp-1234", "params")
    os.makedirs(in_flight)
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    params = checkpointing.load_params(workdir)
    assert int(np.asarray(jax.tree_util.tree_leaves(params)[0]).size) > 0
    assert os.path.isdir(in_flight)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    assert not os.path.exists(os.path.join(workdir, checkpointing.CORRUPT_DIR))


# ---------------------------------------------------------------------------------------
# A run's identity: saved with every checkpoint as well as in config.json
# ---------------------------------------------------------------------------------------


def test_a_lost_or_edited_config_json_is_restored_from_the_checkpoint_or_refused(tmp_path):
    workdir = str(tmp_path / "run")
    trained = attn_config(steps=2, passes=2)
    train.train_and_evaluate(trained, workdir)
    config_path = os.path.join(workdir, checkpointing.CONFIG_FILE)
    with open(config_path) as f:
        original = json.load(f)
    with checkpointing.Checkpointer(workdir, read_only=True) as ckpt:
        assert ckpt.saved_record(2)["config"]["passes"] == 2

    def write(obj):
        with open(config_path, "w") as f:
            json.dump(obj, f)

    # Deleted: a passes=1 relaunch is refused (it would be recorded as passes=1)...
    os.remove(config_path)
    with pytest.raises(run_dir.ConfigConflictError, match="passes: saved 2, requested 1"):
        train.Trainer(attn_config(steps=4, passes=1), workdir)
    # ...and the record is taken from the checkpoint by readers and by the same command.
    assert checkpointing.load_params(workdir).config.layout == ("attn",)
    train.Trainer(attn_config(steps=4, passes=2), workdir)
    assert checkpointing.read_run_config(workdir)["config"]["passes"] == 2
    # Edited to another rule / another N: refused, naming the file and the field.
    write({**original, "model_config": {**original["model_config"], "rule": "delta"}})
    with pytest.raises(ValueError, match=rf"{config_path} does not describe the model.*rule"):
        checkpointing.load_params(workdir)
    write({**original, "config": {**original["config"], "passes": 1}})
    with pytest.raises(
        run_dir.ConfigConflictError,
        match=rf"{config_path} disagrees .*\(passes: config.json 1, checkpoint 2\)",
    ):
        train.Trainer(attn_config(steps=4, passes=1), workdir)
    # Not a run record: the file is named, for readers and for a relaunch.
    for bad, what in (([1, 2], "got list"), ({"config": {}}, "keys \\['config'\\]")):
        write(bad)
        with pytest.raises(ValueError, match=rf"{config_path} is not a run record.*{what}"):
            checkpointing.load_params(workdir)
        with pytest.raises(
            run_dir.ConfigConflictError, match=rf"{config_path} is not a run record"
        ):
            train.Trainer(trained, workdir)


# ---------------------------------------------------------------------------------------
# Damaged metrics lines anywhere; a checkpoint save that fails on a full disk
# ---------------------------------------------------------------------------------------


def test_damaged_metrics_lines_in_the_middle_are_dropped_and_the_history_survives(
    tmp_path, monkeypatch, caplog
):
    """Garbage written over step 1's line and a step that is a string on step 2's line:
    the resume drops both with a warning naming them, and the eval history (saved with
    the checkpoint) gives the uninterrupted run's steps_to_90pct."""
    config = attn_config(eval_every=1, log_every=1)
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    workdir = str(tmp_path / "run")
    # the fifth step, after checkpoint 4
    with interrupted_at_batch(monkeypatch, 4), pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, workdir)
    path = os.path.join(workdir, run_dir.METRICS_FILE)
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    lines[0] = b"\x00garbage" + lines[0][8:]  # same length: bytes overwritten in place
    lines[1] = lines[1].replace(b'"step": 2', b'"step": "2"')
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))
    summary = train.train_and_evaluate(config, workdir)
    assert summary["resumed_from"] == 4 and summary["status"] == "completed"
    assert "line 1: unparseable" in caplog.text and "line 2: step is '2'" in caplog.text
    assert summary["steps_to_90pct"] == straight["steps_to_90pct"]
    assert summary["eval"] == straight["eval"]
    kept = read_metrics(workdir)
    assert [m["step"] for m in kept] == [3, 4, 5, 6]
    assert kept[-2:] == [
        {**m, "elapsed_s": kept[i - 2]["elapsed_s"], "tokens_per_s": kept[i - 2]["tokens_per_s"]}
        for i, m in enumerate(read_metrics(str(tmp_path / "straight"))[-2:])
    ]


def test_a_checkpoint_save_on_a_full_disk_stops_the_run_naming_the_directory(tmp_path, monkeypatch):
    """Orbax reports a full disk with its own exception ("Failed to write ... bytes to
    file ..."): the run stops with one line naming the run directory and what is kept."""
    import orbax.checkpoint as ocp

    workdir = str(tmp_path / "run")
    real_save = ocp.CheckpointManager.save

    def full_at_4(self, step, *args, **kwargs):
        if step == 4:
            raise ValueError("Failed to write 24373 bytes to file 7: No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_4)
    with pytest.raises(run_dir.RunIOError) as e:
        train.train_and_evaluate(attn_config(), workdir)
    message = str(e.value)
    assert "\n" not in message and e.value.errno == errno.ENOSPC
    assert (
        f"I/O error on {os.path.join(workdir, 'checkpoints', '4')}: writing a checkpoint" in message
    )
    assert "Failed to write 24373 bytes" in message
    assert (
        "its last checkpoint (step 2) is kept" in message and f"make {workdir} writable" in message
    )
    with open(os.path.join(workdir, run_dir.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["status"] == "failed" and summary["last_checkpoint"] == 2
    monkeypatch.undo()  # space freed: the same command resumes
    summary = train.train_and_evaluate(attn_config(), workdir)
    assert summary["resumed_from"] == 2 and summary["status"] == "completed"


@pytest.mark.parametrize("failures", [1, checkpointing._READER_OPEN_TRIES])
def test_a_reader_lists_again_when_a_step_is_rotated_away_while_it_opens(
    tmp_path, monkeypatch, failures
):
    """Opening Orbax's manager reads each step's metadata; a live run may delete a step in
    between (Orbax then raises NotADirectoryError). A reader lists again; a reader that
    keeps losing the race gets a CheckpointError naming the directory; a writer, which
    owns the directory, is never retried."""
    import orbax.checkpoint as ocp

    ckpt_dir = tmp_path / checkpointing.CHECKPOINT_DIR
    ckpt_dir.mkdir()
    real, calls = ocp.CheckpointManager, []

    def racing_manager(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise NotADirectoryError(f"Path is not a directory: {ckpt_dir}/2")
        return real(*args, **kwargs)

    monkeypatch.setattr(ocp, "CheckpointManager", racing_manager)
    if failures < checkpointing._READER_OPEN_TRIES:
        with checkpointing.Checkpointer(tmp_path, read_only=True) as ckpt:
            assert ckpt.all_steps() == []
        assert len(calls) == failures + 1
    else:
        with pytest.raises(checkpointing.CheckpointError, match=f"{ckpt_dir} changed"):
            checkpointing.Checkpointer(tmp_path, read_only=True)
        assert len(calls) == failures
    calls.clear()
    with pytest.raises(NotADirectoryError):
        checkpointing.Checkpointer(tmp_path, async_save=False)
    assert len(calls) == 1


def test_the_summary_names_each_machine_and_flags_a_resume_on_another(tmp_path, monkeypatch):
    """Results differ between CPU models: summary.json names this process's machine and,
    carried through the checkpoints, every machine the run was trained on; a resume on a
    machine that computes differently is flagged, one that computes alike is not."""
    from sleep_consolidation.training import machine

    workdir = str(tmp_path / "run")
    with interrupted_at_batch(monkeypatch, 4), pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(attn_config(), workdir)
    here = machine.describe()
    assert here["cpu"] and here["backend"] == jax.default_backend() and here["jax"]
    first = json.load(open(os.path.join(workdir, run_dir.SUMMARY_FILE)))
    assert first["machine"] == here
    # The same machine under another host name computes alike: one machine, no flag.
    renamed = {**here, "host": "another-host"}
    monkeypatch.setattr(machine, "describe", lambda: renamed)
    summary = train.train_and_evaluate(attn_config(steps=8), workdir, allow_config_change=True)
    assert summary["resumed_from"] == 4 and summary["machines"] == [here]
    assert "machine_changed" not in summary
    # Another CPU model: both named, in order, and the run flagged.
    other = {**here, "cpu": "Another CPU", "isa": "avx2"}
    monkeypatch.setattr(machine, "describe", lambda: other)
    summary = train.train_and_evaluate(attn_config(steps=10), workdir, allow_config_change=True)
    assert summary["resumed_from"] == 8
    assert summary["machine"] == other and summary["machines"] == [here, other]
    assert summary["machine_changed"] == ["cpu", "isa"]
