"""The absl entry point, run as a subprocess the way a researcher launches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=experiments/configs/recall.py:tiny"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # Shares the session's compilation cache with test_train.py (same tiny program).
    e = dict(os.environ)
    e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "jax")
    e["JAX_PLATFORMS"] = "cpu"
    return e


def run(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow  # heavy (subprocesses / training); CI runs it with -m slow
def test_cli_trains_writes_outputs_and_resumes(tmp_path, env):
    workdir = str(tmp_path / "run")
    common = [TINY, f"--workdir={workdir}", "--config.checkpoint_every=10", "--config.log_every=5"]
    first = run(env, *common, "--config.steps=20")
    assert first.returncode == 0, first.stderr[-3000:]
    for name in (
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/10",
        "checkpoints/20",
    ):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert not os.path.exists(os.path.join(workdir, "train.lock"))  # released at the end
    assert "tokens/s" in first.stderr and "ETA" in first.stderr  # progress lines

    second = run(env, *common, "--config.steps=30")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "from step 20" in second.stderr
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["status"] == "completed" and summary["step"] == 30
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [m["step"] for m in lines] == [5, 10, 15, 20, 25, 30]
    for m in lines:
        assert {"step", "loss", "tokens_per_s", "elapsed_s"} <= set(m)
    assert "eval/acc/d=4" in lines[-1]

    conflict = run(env, *common, "--config.d_model=64")
    assert conflict.returncode != 0
    assert "model.d_model: saved 32, requested 64" in conflict.stderr

    # A change of what is computed needs --allow_config_change, and is then recorded.
    changed = [*common, "--config.steps=30", "--config.passes=3"]
    refused = run(env, *changed)
    assert refused.returncode != 0 and "passes: saved 2, requested 3" in refused.stderr
    allowed = run(env, *changed, "--allow_config_change")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    with open(os.path.join(workdir, "config.json")) as f:
        record = json.load(f)
    assert record["config"]["passes"] == 3
    assert record["config_changes"][-1]["fields"]["passes"] == [2, 3]


def test_cli_unknown_field_fails_clearly(tmp_path, env):
    out = run(env, TINY, f"--workdir={tmp_path / 'run'}", "--config.nonexistent=1")
    assert out.returncode != 0
    assert "no such config field 'nonexistent'" in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--config.passes=two"], "--config.passes=two: invalid literal for int()"),
        (["--config.pases=2"], "--config.pases: no such config field 'pases'; did you mean "
                               '"passes"?'),  # fmt: skip
        (["--config.passes=0"], "invalid config: passes must be an int >= 1, got 0"),
        (["--num_processes=2", "--process_id=0"], "--num_processes and --process_id without a "
                                                  "coordinator: add --coordinator_address="),
    ],
)  # fmt: skip
def test_cli_usage_errors_are_one_line_printed_once_exit_2(tmp_path, env, args, says):
    out = run(env, TINY, f"--workdir={tmp_path / 'run'}", *args)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if "error" in ln.lower()]
    assert errors == [errors[0]] and errors[0].startswith("error: "), out.stderr[-2000:]
    assert says in errors[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_cli_help_lists_the_config_fields_with_their_defaults(env):
    out = run(env, "--help", TINY)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in (
        "--workdir",
        "--allow_config_change",
        "--coordinator_address",
        "--config.passes=2",
        "--config.task.window=",
        "--config.eviction='hard'",
    ):
        assert line in out.stdout, line
    bare = run(env, "--helpfull")
    assert bare.returncode == 0 and "Add --config=<file> to --help" in bare.stdout


def test_cli_unwritable_workdir_fails_naming_the_path(tmp_path, env):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a directory cannot be made under a file, even by root
    out = run(env, TINY, f"--workdir={blocker / 'run'}")
    assert out.returncode == 1
    assert f"error: I/O error on {blocker / 'run'}" in out.stderr


def test_cli_refuses_a_run_directory_another_live_process_trains(tmp_path, env):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as holder:
        try:
            (workdir / "train.lock").write_text(json.dumps({"pid": holder.pid, "since": 0}))
            out = run(env, TINY, f"--workdir={workdir}", "--config.steps=2")
        finally:
            holder.kill()
    assert out.returncode == 1
    assert f"another training run (pid {holder.pid}" in out.stderr, out.stderr
    assert not (workdir / "config.json").exists()  # refused before anything was written
    # (a stale lock, its pid dead, is taken over: DirLock's own tests in test_sweep.py)


def _wait_for_step(workdir, step, proc, timeout_s=300):
    """Waits until metrics.jsonl logs `step` (or the process ends)."""
    import time

    path, t0 = os.path.join(workdir, "metrics.jsonl"), time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout_s:
        try:
            with open(path) as f:
                if any(json.loads(ln)["step"] >= step for ln in f if ln.endswith("\n")):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the run never logged step {step} (exit {proc.poll()})")


@pytest.mark.slow  # a real training subprocess, stopped mid-run (about 30 s)
def test_sigterm_stops_the_run_like_sigint_recording_it_and_releasing_the_lock(tmp_path, env):
    import signal

    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", TINY, f"--workdir={workdir}",
         "--config.steps=100000", "--config.checkpoint_every=2", "--config.log_every=1",
         "--config.eval_every=100000"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_step(workdir, 3, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM" in err
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM", summary
    assert summary["last_checkpoint"] >= 2
    assert str(summary["last_checkpoint"]) in os.listdir(os.path.join(workdir, "checkpoints"))
    assert not os.path.exists(os.path.join(workdir, "train.lock"))


def test_a_stop_signal_inside_signals_deferred_is_raised_as_the_block_ends():
    import signal
    import time

    from sleep_consolidation.training import run_dir

    ran_to_the_end = []
    with pytest.raises(run_dir.StopSignal) as e:
        with run_dir.stop_signals_raise():
            with run_dir.signals_deferred():
                with run_dir.signals_deferred():  # nested: held until the outermost ends
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.2)
                ran_to_the_end.append("inner")
                time.sleep(0.2)
                ran_to_the_end.append("outer")
    assert e.value.signal_name == "SIGTERM" and ran_to_the_end == ["inner", "outer"]
    with run_dir.signals_deferred():  # nothing pending afterwards: a quiet block ends quietly
        pass
    # raise_pending: where a loop may stop, the held signal is raised there, and only once.
    steps = []
    with pytest.raises(run_dir.StopSignal):
        with run_dir.stop_signals_raise(), run_dir.signals_deferred():
            for step in range(3):
                run_dir.raise_pending()
                steps.append(step)
                if step == 1:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.2)  # delivered here, held
    assert steps == [0, 1]  # step 2 never started
    with run_dir.signals_deferred():
        run_dir.raise_pending()  # nothing left pending


def test_a_stop_signal_raises_once_and_the_handlers_are_restored():
    import signal
    import time

    from sleep_consolidation.training import run_dir

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(run_dir.StopSignal) as e:
        with run_dir.stop_signals_raise():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises in this thread at the next bytecode
    assert e.value.signal_name == "SIGINT" and isinstance(e.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is before
    with run_dir.stop_signals_raise():  # a repeat while stopping is logged, not raised
        with pytest.raises(run_dir.StopSignal):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
