"""`Schedule.wake_passes`: the online-depth control (the looped blocks run K times at wake,
every run from the window's incoming fast weights), checked against a hand-built reference
over `model.window_pass`, for causality, and for its refusals."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

import sleep_consolidation as sc
from sleep_consolidation import model
from sleep_consolidation.training import run_config
from tests.conftest import init, random_tokens, tiny_config

L = 4
LAYOUT = ("attn", "ssm")  # the smallest hybrid: compiling dominates these tests
_forward = jax.jit(sc.forward, static_argnames=("window", "passes", "wake_passes",
                                                "reinject_embedding", "return_fast"))  # fmt: skip


def _reference(params, tokens, K, reinject):
    """The windows one after another with `model.window_pass` directly: run k > 1 reads run
    k-1's output (plus the embedding under re-injection) and starts from the fast weights
    the window started with; the next window starts from the last run's."""
    cfg = params.config
    B, T = tokens.shape
    fast = {b: jnp.zeros((B, cfg.num_heads, cfg.dh, cfg.dh)) for b in cfg.ssm_blocks}
    empty = jnp.zeros((B, 0, cfg.num_heads, cfg.dh))
    prefix = {b: (empty, empty, jnp.zeros((0,), bool)) for b in cfg.attn_blocks}
    blocks = range(len(cfg.layout))
    logits = []
    for t0 in range(0, T, L):
        e = model.embed(params, tokens[:, t0 : t0 + L])
        h, out, _ = model.window_pass(params, blocks, e, fast, prefix)
        for _ in range(K - 1):
            h, out, _ = model.window_pass(params, blocks, h + e if reinject else h, fast, prefix)
        fast = out
        logits.append(model.logits(params, h))
    return jnp.concatenate(logits, axis=1), fast


@pytest.mark.parametrize("reinject", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_wake_passes_equal_the_reference(reinject):
    params = init(tiny_config(rule="delta", impl="scan", layout=LAYOUT))
    tokens = random_tokens(0, 2, 3 * L)
    got, fast = _forward(
        params, tokens, window=L, passes=1, wake_passes=3, reinject_embedding=reinject,
        return_fast=True,
    )  # fmt: skip
    want, want_fast = _reference(params, tokens, 3, reinject)
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_close(fast, want_fast, atol=2e-5, rtol=2e-5)
    plain = _forward(params, tokens, window=L, passes=1)
    assert float(jnp.max(jnp.abs(got - plain))) > 1e-3  # the extra runs change the logits


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_wake_passes_are_causal_and_differentiable():
    params = init(tiny_config(layout=LAYOUT))
    tokens = random_tokens(1, 2, 3 * L)
    late = tokens.at[:, 6:].set((tokens[:, 6:] + 1) % 11)  # change positions 6..11 only
    a = _forward(params, tokens, window=L, passes=1, wake_passes=4)
    b = _forward(params, late, window=L, passes=1, wake_passes=4)
    chex.assert_trees_all_close(a[:, :6], b[:, :6], atol=1e-6)
    assert float(jnp.max(jnp.abs(a[:, 6:] - b[:, 6:]))) > 1e-4

    def loss(p):
        return jnp.mean(sc.forward(p, tokens, L, 1, wake_passes=4) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    chex.assert_tree_all_finite(grads)


def test_wake_passes_are_refused_with_sleep_streaming_and_bad_values():
    params = init(tiny_config(layout=LAYOUT))
    tokens = random_tokens(2, 2, 2 * L)
    with pytest.raises(ValueError, match=r"wake_passes=2 \(online depth\) needs passes=1"):
        sc.forward(params, tokens, L, 2, wake_passes=2)
    with pytest.raises(ValueError, match="training form only"):
        sc.init_state(params.config, 2, L, wake_passes=2)
    with pytest.raises(ValueError, match="wake_passes must be an int >= 1"):
        sc.Schedule(wake_passes=0)


def test_the_run_config_refuses_wake_passes_with_sleep_or_eval_passes():
    from experiments.configs import rule110

    c = rule110.get_config("depth")
    c.wake_passes = 4
    run_config.resolve_config(c)  # N = 1: the control itself is fine
    c.passes = 4
    with pytest.raises(ValueError, match="needs passes=1"):
        run_config.resolve_config(c)
    c.passes, c.eval_passes = 1, (1, 4)
    with pytest.raises(ValueError, match=r"eval_passes=\[1, 4\] asks for more"):
        run_config.resolve_config(c)
