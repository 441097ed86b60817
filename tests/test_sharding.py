"""Data parallelism (sharding.py): config checks here; 8 fake CPU devices and two local
processes in subprocesses (a device count is fixed when a process starts JAX).

This file is also the subprocesses' program: `python tests/test_sharding.py eight ...`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import conftest
import jax
import numpy as np
import pytest
from conftest import read_metrics

from sleep_consolidation.model import init_params
from sleep_consolidation.training import (
    checkpointing,
    optimizers,
    run_config,
    run_dir,
    sharding,
    train,
    train_step,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Max error between data-parallel and one-device training: |a - b| / max(1, |b|), i.e.
# absolute below magnitude 1 and relative above.
TOL = 1e-5


def attn_config(**overrides):
    """conftest's tiny attention-only run, 4 steps with one log per step."""
    return conftest.attn_config(**{"steps": 4, "log_every": 1, "eval_every": 4, **overrides})


def cpu_env(num_devices: int, cache_dir) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir))
    flags = env.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={num_devices}"])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    for name in (sharding.ENV_COORDINATOR, sharding.ENV_NUM_PROCESSES, sharding.ENV_PROCESS_ID):
        env.pop(name, None)
    return env


def load_params(workdir):
    """The run's latest params on this process's first device, whatever the topology they
    were saved from. (`checkpointing.load_params` passes no sharding; Orbax then refuses a
    checkpoint written by more devices than this process has: "Topology mismatch".)"""
    saved = checkpointing.read_run_config(workdir)
    cfg = checkpointing.model_config_from_dict(saved["model_config"])
    abstract = sharding.abstract_with_sharding(
        jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))),
        jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
    )
    with checkpointing.Checkpointer(workdir, async_save=False) as ckpt:
        return ckpt.restore_params(abstract, ckpt.latest_step())


def max_error(a, b) -> float:
    """Max over two pytrees' elements of |a - b| / max(1, |b|)."""
    err = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        err = max(err, float((np.abs(x - y) / np.maximum(1.0, np.abs(y))).max(initial=0.0)))
    return err


def assert_same_run(workdir, reference):
    """Same per-step losses, params and eval as the one-device run in `reference`."""
    got, want = read_metrics(workdir), read_metrics(reference)
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for k in ("loss", "grad_norm"):
        a, b = [m[k] for m in got], [m[k] for m in want]
        assert max_error(a, b) <= TOL, (k, a, b)
    err = max_error(load_params(workdir), load_params(reference))
    assert err <= TOL, err
    with open(os.path.join(workdir, run_dir.SUMMARY_FILE)) as f:
        ev = json.load(f)["eval"]
    with open(os.path.join(reference, run_dir.SUMMARY_FILE)) as f:
        ev_ref = json.load(f)["eval"]
    assert set(ev) == set(ev_ref)
    for k in ev:
        np.testing.assert_allclose(ev[k], ev_ref[k], rtol=TOL, atol=TOL, err_msg=k)


# ---------------------------------------------------------------------------------------
# In this process (one CPU device)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, message",
    [("all", "data_parallel"), (0, "data_parallel"), (2.0, "data_parallel"),
     (3, "batch_size 8 is not divisible by data_parallel=3")],
)  # fmt: skip
def test_bad_data_parallel_is_refused(value, message):
    with pytest.raises(ValueError, match=message):
        run_config.resolve_config(attn_config(data_parallel=value))


def test_data_parallel_values_and_device_checks(tmp_path):
    for ok in (False, True, 1, 8):
        run_config.resolve_config(attn_config(data_parallel=ok))
    assert sharding.mesh_from_config(False) is None
    assert sharding.mesh_from_config(1) is None
    mesh = sharding.mesh_from_config(True)
    assert mesh.axis_names == (sharding.DATA_AXIS,) and mesh.devices.size == jax.device_count()
    with pytest.raises(ValueError, match=r"need an int in \[1, 1\]"):
        sharding.make_data_mesh(2)
    # More devices than there are: refused before the workdir is touched.
    with pytest.raises(ValueError, match="data parallelism over 2 devices"):
        train.train_and_evaluate(attn_config(data_parallel=2), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_distributed_is_not_initialized_unless_asked(monkeypatch):
    for name in (sharding.ENV_COORDINATOR, sharding.ENV_NUM_PROCESSES, sharding.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    called = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: called.append(kw))
    assert sharding.maybe_initialize_distributed() is False and not called
    monkeypatch.setenv(sharding.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(sharding.ENV_PROCESS_ID, "1")
    monkeypatch.setattr(sharding, "_wait_for_coordinator", lambda *a: called.append(a))
    assert sharding.maybe_initialize_distributed("10.0.0.1:1234", timeout_s=7) is True
    assert called == [
        ("10.0.0.1:1234", 7, "process 1 of 2"),
        dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1,
             initialization_timeout=7),
    ]  # fmt: skip


def test_a_worker_that_cannot_reach_the_coordinator_gets_a_clear_error(monkeypatch):
    # JAX's client would abort the process at its deadline; the host-side check raises a
    # Python error naming the address instead, before JAX is asked.
    called = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: called.append(kw))
    with socket.socket() as s:  # a port that nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(sharding.DistributedInitError, match=f"127.0.0.1:{port} within 0.5 s"):
        sharding.maybe_initialize_distributed(f"127.0.0.1:{port}", 2, 1, timeout_s=0.5)
    assert not called
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        sharding.maybe_initialize_distributed("127.0.0.1:1", 2, 1, timeout_s=0)
    with socket.socket() as server:  # a listening coordinator: the worker goes on to JAX
        server.bind(("127.0.0.1", 0))
        server.listen()
        addr = f"127.0.0.1:{server.getsockname()[1]}"
        assert sharding.maybe_initialize_distributed(addr, 2, 1, timeout_s=5) is True
    assert called[0]["coordinator_address"] == addr


# ---------------------------------------------------------------------------------------
# 8 fake CPU devices (subprocess)
# ---------------------------------------------------------------------------------------


def _worker_eight(out_dir: str) -> None:
    """In a process with 8 CPU devices: one-device and 8-way runs (the latter resumed
    halfway), a checkpoint restored into the 8-device sharding, and shard_batch."""
    assert jax.device_count() == 8, jax.devices()
    one, eight = os.path.join(out_dir, "one"), os.path.join(out_dir, "eight")
    train.train_and_evaluate(attn_config(), one)
    train.train_and_evaluate(attn_config(data_parallel=8, steps=2), eight)
    summary = train.train_and_evaluate(attn_config(data_parallel=8), eight)
    assert summary["resumed_from"] == 2 and summary["step"] == 4, summary

    mesh = sharding.make_data_mesh()
    assert mesh.devices.size == 8 and sharding.mesh_from_config(3).devices.size == 3
    # The one-device checkpoint restores straight into the replicated 8-device layout.
    spec = run_config.resolve_config(attn_config())
    tx = optimizers.optimizer_from_config(attn_config())
    abstract = jax.eval_shape(
        lambda: train_step.init_train_state(init_params(spec.model_config, jax.random.key(0)), tx)
    )
    repl = sharding.replicated(mesh)
    with checkpointing.Checkpointer(one) as ckpt:
        state = ckpt.restore(sharding.abstract_with_sharding(abstract, repl))
    for leaf in jax.tree_util.tree_leaves(state):
        assert leaf.sharding == repl, leaf.sharding
    assert max_error(state.params, load_params(one)) == 0.0

    batch = spec.task.batch(0, 0, 16)
    sharded = sharding.shard_batch(batch, mesh)
    assert sharded.tokens.sharding == sharding.batch_sharded(mesh)
    assert [s.data.shape for s in sharded.tokens.addressable_shards] == [(2, 16)] * 8
    np.testing.assert_array_equal(np.asarray(sharded.tokens), batch.tokens)
    try:
        sharding.shard_batch(spec.task.batch(0, 0, 12), mesh)
        raise AssertionError("a batch of 12 on 8 devices was accepted")
    except ValueError as e:
        assert "batch_size 12 is not divisible by the 8 devices" in str(e), e


@pytest.mark.slow  # heavy (subprocesses / training); CI runs it with -m slow
def test_eight_devices_match_one_device(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "eight", str(tmp_path)],
        cwd=REPO, env=cpu_env(8, tmp_path / "jax_cache"), capture_output=True, text=True,
        timeout=900,  # a guard against hangs only: CI runs two slow files at once
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_run(str(tmp_path / "eight"), str(tmp_path / "one"))


# ---------------------------------------------------------------------------------------
# Two processes on 127.0.0.1 (subprocesses), 2 CPU devices each
# ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(cmds, env, logs, timeout):
    """Runs `cmds` concurrently; kills all of them on a timeout, on any failure (the others
    would wait for it at a barrier) or on an error here. Returns (returncode, log) pairs."""
    procs = []
    try:
        for cmd, log in zip(cmds, logs, strict=True):
            with open(log, "w") as f:
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f,
                                              stderr=subprocess.STDOUT))  # fmt: skip
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    out = []
    for p, log in zip(procs, logs):
        with open(log) as f:
            out.append((p.returncode, f.read()))
    return out


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    workdir, reference = str(tmp_path / "run"), str(tmp_path / "reference")
    env = cpu_env(2, tmp_path / "jax_cache")
    c = attn_config()
    args = [
        "--config=experiments/configs/recall.py:tiny", "--config.layout=('attn',)",
        *[f"--config.{k}={c[k]}" for k in ("batch_size", "log_every", "eval_every",
                                           "checkpoint_every", "eval_size", "eval_batch_size")],
        "--config.data_parallel=True", f"--workdir={workdir}",
        f"--compilation_cache_dir={tmp_path / 'jax_cache'}",
    ]  # fmt: skip
    # Steps 1-2, then a second launch resumes (restoring across both processes) to 4.
    for steps in (2, 4):
        port = free_port()
        cmds = [
            [sys.executable, "-m", "experiments.train", *args, f"--config.steps={steps}",
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={i}"]
            for i in range(2)
        ]  # fmt: skip
        logs = [str(tmp_path / f"steps{steps}_process{i}.log") for i in range(2)]
        # timeout: a hang guard only (CI runs two slow files on the two cores at once)
        results = run_processes(cmds, env, logs, timeout=900)
        for i, (rc, log) in enumerate(results):
            assert rc == 0, f"process {i} exited {rc}:\n{log[-4000:]}"
            assert f"JAX process {i} of 2" in log
            assert "data-parallel over 4 devices (2 process(es))" in log
    assert "resuming" in results[0][1] and "from step 2" in results[0][1]
    with open(os.path.join(workdir, run_dir.SUMMARY_FILE)) as f:
        assert json.load(f)["resumed_from"] == 2
    # Written once (by process 0): one line per step, not two.
    assert [m["step"] for m in read_metrics(workdir)] == [1, 2, 3, 4]

    train.train_and_evaluate(attn_config(), reference)  # one process, one device
    assert_same_run(workdir, reference)


if __name__ == "__main__":
    if sys.argv[1] == "eight":
        _worker_eight(sys.argv[2])
    else:
        raise SystemExit(f"unknown worker {sys.argv[1]!r}")
