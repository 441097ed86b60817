"""`stream`: one compiled scan over tokens == the reference Python-driven wake/sleep/evict
loop (`stream(..., impl="loop")`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init, random_tokens, tiny_config

import sleep_consolidation as sc
from sleep_consolidation import streaming


def _assert_same(a, b, tol=2e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("eviction", ["hard", pytest.param("sliding", marks=pytest.mark.slow)])
def test_stream_matches_the_reference_loop(eviction):
    params = init(tiny_config(), 0)
    B, L, N = 2, 4, 3
    toks = random_tokens(1, B, 14)  # 14: not a multiple of L
    # Start from a non-empty state: mid-window, with nonzero fast weights from a past window.
    state0 = sc.init_state(params.config, batch_size=B, window=L, eviction=eviction)
    state0, _ = streaming.stream(params, state0, toks[:, :6], N, impl="loop")
    assert int(state0.pos) == 2
    want_state, want_logits = streaming.stream(params, state0, toks[:, 6:], N, impl="loop")
    got_state, got_logits = streaming.stream(params, state0, toks[:, 6:], passes=N)
    assert got_logits.shape == (B, 8, 11)
    _assert_same(got_logits, want_logits)
    _assert_same(got_state, want_state)
    assert int(got_state.pos) == int(want_state.pos) == 2


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_stream_chunked_rule():
    params = init(tiny_config("delta", impl="chunked", chunk_size=2), 2)
    toks = random_tokens(3, 1, 9)
    state = sc.init_state(params.config, batch_size=1, window=3)
    want_state, want_logits = streaming.stream(params, state, toks, 2, impl="loop")
    got_state, got_logits = streaming.stream(params, state, toks, passes=2)
    _assert_same(got_logits, want_logits)
    _assert_same(got_state, want_state)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_stream_matches_forward():
    params = init(tiny_config(), 4)
    toks = random_tokens(5, 2, 10)
    state = sc.init_state(params.config, batch_size=2, window=4)
    _, logits = streaming.stream(params, state, toks, passes=1)  # N=1: no sleep at all
    _assert_same(logits, sc.forward(params, toks, window=4, passes=1))


def test_stream_does_not_retrace():
    params = init(tiny_config(), 6)
    state = sc.init_state(params.config, batch_size=2, window=4)
    state, _ = streaming.stream(params, state, random_tokens(7, 2, 10), passes=1)
    n = streaming.compiled_count()
    assert n >= 1
    for seed in range(3):  # same shapes, new values, a mid-window state: no new program
        state, _ = streaming.stream(params, state, random_tokens(8 + seed, 2, 10), passes=1)
    assert streaming.compiled_count() == n


def test_stream_argument_checks():
    params = init(tiny_config(), 9)
    state = sc.init_state(params.config, batch_size=2, window=4)
    toks = jnp.zeros((2, 3), jnp.int32)
    for bad in (0, -1, 1.0, True, "2"):
        with pytest.raises(ValueError, match="passes"):
            streaming.stream(params, state, toks, passes=bad)
    with pytest.raises(ValueError, match="rank 2"):
        streaming.stream(params, state, jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match="integer dtype"):
        streaming.stream(params, state, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="batch"):
        streaming.stream(params, state, jnp.zeros((3, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"ids must lie"):
        streaming.stream(params, state, jnp.full((2, 3), 11, jnp.int32))
    with pytest.raises(ValueError, match="impl"):
        streaming.stream(params, state, toks, impl="python")
    with pytest.raises(ValueError, match="at least one"):
        streaming.stream(params, state, jnp.zeros((2, 0), jnp.int32))
    full = state.replace(pos=jnp.asarray(4, jnp.int32))
    with pytest.raises(ValueError, match="full window"):
        streaming.stream(params, full, toks)
