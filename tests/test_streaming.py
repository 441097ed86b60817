"""`stream`: one compiled scan over tokens == the Python-driven wake/sleep/evict loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sleep_consolidation as sc
from sleep_consolidation import streaming

_wake = jax.jit(sc.wake_step)
_sleep = jax.jit(sc.sleep_step)
_evict = jax.jit(sc.evict)


def _init(cfg, seed):
    return jax.jit(sc.init_params, static_argnums=0)(cfg, jax.random.key(seed))


def _tokens(seed, batch, length):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, 11, (batch, length)), jnp.int32)


def _config(**kw):
    kw.setdefault("rule", "gated_delta")
    return sc.ModelConfig(vocab_size=11, d_model=16, num_heads=2, **kw)


def _python_loop(params, state, tokens, passes):
    """design.md's streaming loop, one host round trip per token."""
    outs = []
    for t in range(tokens.shape[1]):
        state, logits_t = _wake(params, state, tokens[:, t])
        outs.append(logits_t)
        if sc.window_full(state):
            for _ in range(passes - 1):
                state = _sleep(params, state)
            state = _evict(state)
    return state, jnp.stack(outs, axis=1)


def _assert_same(a, b, tol=2e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_stream_matches_python_loop(eviction):
    params = _init(_config(), 0)
    B, L, N = 2, 4, 3
    toks = _tokens(1, B, 14)  # 14: not a multiple of L
    # Start from a non-empty state: mid-window, with nonzero fast weights from a past window.
    state0 = sc.init_state(params.config, batch_size=B, window=L, eviction=eviction)
    state0, _ = _python_loop(params, state0, toks[:, :6], N)
    assert int(state0.pos) == 2
    want_state, want_logits = _python_loop(params, state0, toks[:, 6:], N)
    got_state, got_logits = streaming.stream(params, state0, toks[:, 6:], passes=N)
    assert got_logits.shape == (B, 8, 11)
    _assert_same(got_logits, want_logits)
    _assert_same(got_state, want_state)
    assert int(got_state.pos) == int(want_state.pos) == 2


def test_stream_chunked_rule():
    params = _init(_config(rule="delta", impl="chunked", chunk_size=2), 2)
    toks = _tokens(3, 1, 9)
    state = sc.init_state(params.config, batch_size=1, window=3)
    want_state, want_logits = _python_loop(params, state, toks, 2)
    got_state, got_logits = streaming.stream(params, state, toks, passes=2)
    _assert_same(got_logits, want_logits)
    _assert_same(got_state, want_state)


def test_stream_matches_forward():
    params = _init(_config(), 4)
    toks = _tokens(5, 2, 10)
    state = sc.init_state(params.config, batch_size=2, window=4)
    _, logits = streaming.stream(params, state, toks, passes=1)  # N=1: no sleep at all
    _assert_same(logits, sc.forward(params, toks, window=4, passes=1))


def test_stream_does_not_retrace():
    params = _init(_config(), 6)
    state = sc.init_state(params.config, batch_size=2, window=4)
    state, _ = streaming.stream(params, state, _tokens(7, 2, 10), passes=1)
    n = streaming.compiled_count()
    assert n >= 1
    for seed in range(3):  # same shapes, new values, a mid-window state: no new program
        state, _ = streaming.stream(params, state, _tokens(8 + seed, 2, 10), passes=1)
    assert streaming.compiled_count() == n


def test_stream_argument_checks():
    params = _init(_config(), 9)
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
    with pytest.raises(ValueError, match="at least one"):
        streaming.stream(params, state, jnp.zeros((2, 0), jnp.int32))
    full = state.replace(pos=jnp.asarray(4, jnp.int32))
    with pytest.raises(ValueError, match="full window"):
        streaming.stream(params, full, toks)
