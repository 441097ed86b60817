"""Shared fixtures and helpers: tiny models, tokens, and the library's reference streaming
loop (`stream(..., impl="loop")`, docs/design.md's snippet)."""

from __future__ import annotations

import contextlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sleep_consolidation as sc
from experiments.configs import common, recall
from sleep_consolidation.tasks import Recall

_init_jit = jax.jit(sc.init_params, static_argnums=0)


def tiny_config(rule="gated_delta", layout=("attn", "ssm", "attn", "ssm"), **kw):
    kw.setdefault("vocab_size", 11)
    kw.setdefault("d_model", 16)
    kw.setdefault("num_heads", 2)
    return sc.ModelConfig(layout=layout, rule=rule, **kw)


def init(cfg, seed=0):
    """`init_params(cfg, key(seed))`, jitted (compiles faster than it runs op by op)."""
    return _init_jit(cfg, jax.random.key(seed))


def random_tokens(seed, batch, length, vocab=11):
    """int32 [batch, length] ids in [0, vocab), from numpy's generator."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32)


def stream_loop(
    params, tokens, window, passes, state=None, zero_fast_at_boundary=False, **schedule
):
    """The reference streaming loop (`stream(..., impl="loop")`) from `state` (default: an
    empty one); returns (logits [B, T, V], state). `zero_fast_at_boundary` zeroes the fast
    weights after every eviction (the state must then start at a window boundary)."""
    B, T = tokens.shape
    if state is None:
        state = sc.init_state(params.config, batch_size=B, window=window, **schedule)
    if not zero_fast_at_boundary:
        state, logits = sc.stream(params, state, tokens, passes, impl="loop")
        return logits, state
    assert int(state.pos) == 0, "zero_fast_at_boundary needs a state at a window boundary"
    outs = []
    for t0 in range(0, T, window):
        state, logits = sc.stream(params, state, tokens[:, t0 : t0 + window], passes, impl="loop")
        outs.append(logits)
        if logits.shape[1] == window:  # the window filled, slept and was evicted
            state = state.replace(fast=jax.tree_util.tree_map(jnp.zeros_like, state.fast))
    return jnp.concatenate(outs, axis=1), state


@pytest.fixture
def tokens():
    return jax.random.randint(jax.random.key(1), (2, 11), 0, 11)


def attn_config(**overrides):
    """Recall tiny with an attention-only model: the cheapest program that exercises the
    whole training loop (the loop tests of test_train, test_checkpointing, test_stopping
    and test_sharding), 6 steps of batch 8."""
    c = recall.get_config("tiny")
    c.layout = ("attn",)
    c.update(dict(steps=6, batch_size=8, log_every=2, eval_every=6, checkpoint_every=2,
                  eval_size=16, eval_batch_size=16))  # fmt: skip
    c.update(overrides)
    return c


@contextlib.contextmanager
def interrupted_at_batch(monkeypatch, at_batch: int):
    """Within the block, drawing Recall batch `at_batch` (0-based: it makes step at_batch
    + 1) raises KeyboardInterrupt, as a Ctrl-C mid-run would; the task is restored after."""
    original = Recall.batch

    def interrupted(self, seed, step, batch_size):
        if step == at_batch:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, seed, step, batch_size)

    monkeypatch.setattr(Recall, "batch", interrupted)
    try:
        yield
    finally:
        monkeypatch.setattr(Recall, "batch", original)


@contextlib.contextmanager
def reaped(proc):
    """Yields `proc`, a training subprocess, and kills it if it is still running when the
    block ends (a failed assertion, a timeout), so that no run outlives its test and takes
    a core from the slow test file running beside it in CI."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def read_metrics(workdir):
    """A run's metrics.jsonl as a list of dicts."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def ssm_run_config(**overrides):
    """Recall tiny with 2 pairs of 4 keys and 4 values, window 4, and a model of one
    fast-weight block (d_model 8, mlp_ratio 1): the smallest run config with a fast-weight
    layer (the run-config checks of test_input_checks and test_estimators)."""
    c = common.base_config("recall")
    common.make_tiny(c, num_pairs_values=(2,), num_keys=4, num_values=4, window=4, num_queries=2)
    c.update(d_model=8, layout=("ssm",), mlp_ratio=1)
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A persistent XLA cache shared by one test session's modules that use it: identical
    programs (the same tiny config in several tests, and in CLI subprocesses) compile once;
    XLA's CPU compile of the fast-weight gradients dominates those tests."""
    from jax.experimental.compilation_cache import compilation_cache

    # JAX keeps the cache it opened for the rest of the process: restoring the directory
    # alone left later modules writing to this one (measured: compiles after the teardown
    # still added entries), serializing executables where a long process once aborted
    # (BUILD_NOTES, "CI runs the slow tests one pytest process per file"). Reset both ways.
    old = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.getbasetemp() / "jax"))
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", old)
    compilation_cache.reset_cache()
