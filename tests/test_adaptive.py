"""Adaptive sleep (sleep_consolidation/analysis/adaptive.py): stops on a perfectly recalled window,
never returns a state its criterion scores worse, and equals the fixed-N stream."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sleep_consolidation as sc
from sleep_consolidation.analysis import adaptive

L = 8  # <= the head dimension (16), so the window's keys can be stored exactly
_wake, _sleep = jax.jit(sc.wake_step), jax.jit(sc.sleep_step)  # compiled once per config


def _woken(reinject=False, rule="delta", seed=0, B=3):
    cfg = sc.ModelConfig(vocab_size=12, d_model=32, num_heads=2, layout=("attn", "ssm"),
                         rule=rule, impl="scan")  # fmt: skip
    params = sc.init_params(cfg, jax.random.key(seed))
    state = sc.init_state(cfg, batch_size=B, window=L, reinject_embedding=reinject)
    tokens = jax.random.randint(jax.random.key(seed + 1), (B, L), 0, 12)
    for t in range(L):
        state, _ = _wake(params, state, tokens[:, t])
    return params, state


def _perfect(params, state):
    """The state with each head's S replaced by one that stores the window exactly: S^T k_t
    = v_t for the keys the criterion reads (the minimum-norm solution K S = V)."""
    ((b, (k, v)),) = adaptive.window_keys_values(params, state).items()
    K = jnp.moveaxis(k, 1, 2)  # [B, H, L, dk]
    V = jnp.moveaxis(v, 1, 2)
    S = jnp.swapaxes(K, -1, -2) @ jnp.linalg.solve(K @ jnp.swapaxes(K, -1, -2), V)
    return state.replace(fast={b: S})


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_it_stops_at_once_on_a_window_it_already_recalls_perfectly():
    params, state = _woken()
    perfect = _perfect(params, state)
    np.testing.assert_allclose(adaptive.window_recall(params, perfect), 1.0, atol=1e-4)
    out, passes = adaptive.adaptive_sleep(params, perfect, 1e-4, 8)
    np.testing.assert_array_equal(passes, 1)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(perfect)):
        np.testing.assert_array_equal(a, b)  # rolled back: the input, bit for bit


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_a_window_the_memory_lost_is_slept_on():
    # Zeroed fast weights recall nothing (cosine 0); the first pass writes the window.
    params, state = _woken()
    blank = state.replace(fast=jax.tree_util.tree_map(jnp.zeros_like, state.fast))
    np.testing.assert_allclose(adaptive.window_recall(params, blank), 0.0, atol=1e-6)
    _, passes = adaptive.adaptive_sleep(params, blank, 0.0, 4)
    assert (np.asarray(passes) >= 2).all()


@pytest.mark.parametrize(
    "reinject, rule",
    [pytest.param(False, "delta", marks=pytest.mark.slow), (True, "gated_delta")],  # time
)
def test_never_worse_than_its_input_and_equal_to_that_many_sleep_steps(reinject, rule):
    for seed in range(2):
        params, state = _woken(reinject, rule, seed)
        # room to improve
        state = state.replace(fast=jax.tree_util.tree_map(lambda s: 0.5 * s, state.fast))
        before = adaptive.window_recall(params, state)
        out, passes = adaptive.adaptive_sleep(params, state, 0.0, 6)
        after = adaptive.window_recall(params, out)
        assert (np.asarray(after) >= np.asarray(before) - 1e-6).all(), (before, after)
        passes = np.asarray(passes)
        assert ((1 <= passes) & (passes <= 6)).all()
        # Each example's state is sleep_step applied (its N - 1) times.
        ref = [state]
        for _ in range(5):
            ref.append(_sleep(params, ref[-1]))
        for b, n in enumerate(passes):
            np.testing.assert_allclose(out.fast[1][b], ref[n - 1].fast[1][b], atol=1e-5)
            np.testing.assert_allclose(out.features[b], ref[n - 1].features[b], atol=1e-5)


def test_max_passes_one_is_no_sleep_and_bad_arguments_are_refused():
    params, state = _woken()
    out, passes = adaptive.adaptive_sleep(params, state, 0.0, 1)
    np.testing.assert_array_equal(passes, 1)
    np.testing.assert_array_equal(out.fast[1], state.fast[1])
    with pytest.raises(ValueError, match="max_passes"):
        adaptive.adaptive_sleep(params, state, 0.0, 0)
    # A negative eps is clamped: a worse pass is still rolled back.
    perfect = _perfect(params, state)
    np.testing.assert_array_equal(adaptive.adaptive_sleep(params, perfect, -1.0, 4)[1], 1)
