"""Jitted streaming: a whole block of tokens through the wake/sleep/evict loop in ONE compiled
`lax.scan` over tokens.

    state, logits = stream(params, state, tokens, passes=N)      # tokens int [B, T]

computes exactly what the Python-driven loop of `wake_sleep.py` computes, which is kept next
to it as the named reference (`stream(..., impl="loop")`, used by the tests and the benchmark),

    for t in range(T):
        state, logits[:, t] = wake_step(params, state, tokens[:, t])
        if window_full(state):
            for _ in range(N - 1):
                state = sleep_step(params, state)
            state = evict(state)

but without a host round trip per token: each scan step is a `wake_step` followed by a
`lax.cond` on `window_full` whose true branch runs the N-1 sleep passes (a `lax.scan`) and
`evict`. The consolidation branch only executes at window boundaries, so the per-token wake
cost does not grow with N. One compilation per (config, schedule, window, B, T, N); calling
again with the same shapes reuses it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sleep_consolidation.config import check_tokens
from sleep_consolidation.model import Params
from sleep_consolidation.state import MemoryState, check_state
from sleep_consolidation.wake_sleep import evict, sleep_step, wake_step, window_full

IMPLS = ("scan", "loop")


def _consolidate(params: Params, state: MemoryState, passes: int) -> MemoryState:
    """N-1 sleep passes over the (full) window, then eviction."""
    if passes > 1:
        state, _ = jax.lax.scan(
            lambda s, _: (sleep_step(params, s), None), state, None, length=passes - 1
        )
    return evict(state)


def _stream(params: Params, state: MemoryState, tokens, passes: int):
    def step(s, tok):
        s, logits_t = wake_step(params, s, tok)
        s = jax.lax.cond(window_full(s), lambda x: _consolidate(params, x, passes), lambda x: x, s)
        return s, logits_t

    state, logits = jax.lax.scan(step, state, jnp.swapaxes(tokens, 0, 1))
    return state, jnp.swapaxes(logits, 0, 1)


_stream_jit = jax.jit(_stream, static_argnames=("passes",))

# The reference's steps, each compiled once per (config, schedule, shapes) per process.
_wake_jit = jax.jit(wake_step)
_sleep_jit = jax.jit(sleep_step)
_evict_jit = jax.jit(evict)


def _stream_loop(params: Params, state: MemoryState, tokens, passes: int):
    """The reference: docs/design.md's loop over the jitted steps, one host round trip per token."""
    outs = []
    for t in range(tokens.shape[1]):
        state, logits_t = _wake_jit(params, state, tokens[:, t])
        outs.append(logits_t)
        if window_full(state):
            for _ in range(passes - 1):
                state = _sleep_jit(params, state)
            state = _evict_jit(state)
    return state, jnp.stack(outs, axis=1)


def stream(params: Params, state: MemoryState, tokens, passes: int = 1, *, impl: str = "scan"):
    """Streams a block of tokens through wake, sleep and eviction, in one compiled scan.

    Args:
      params: slow weights (`init_params`).
      state: streaming state (`init_state`, or the state a previous call returned); its
        window must not be full (the loop always evicts a full window before returning).
      tokens: int [B, T] token ids, B the state's batch size; T >= 1 need not be a multiple
        of the window.
      passes: N >= 1 passes per full window (the wake pass + N-1 sleep passes); static.
      impl: "scan" (one compiled `lax.scan`; jit-able) or "loop" (the reference: the Python
        loop over jitted `wake_step` / `sleep_step` / `evict`, deciding `window_full` on the
        host, so it needs concrete arrays and is not jit-able).

    Returns:
      (new state, logits [B, T, V] float32): `logits[:, t]` is the wake-time prediction on
      reading token t, identical to the Python loop of `wake_step`/`sleep_step`/`evict`.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(params, Params):
        raise ValueError(
            f"params must be a Params pytree (init_params), got {type(params).__name__}"
        )
    check_state(state, params.config, caller="stream")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be an int >= 1, got {passes!r}")
    check_tokens(tokens, params.config.vocab_size, rank=2)
    B, T = tokens.shape
    if B != state.features.shape[0]:
        raise ValueError(f"tokens has batch {B} but the state has {state.features.shape[0]}")
    if T < 1:
        raise ValueError("tokens must hold at least one position")
    if not isinstance(state.pos, jax.core.Tracer) and int(state.pos) >= state.window:
        raise ValueError("stream on a full window: call sleep_step (optional) and evict first")
    if impl == "loop":
        return _stream_loop(params, state, jnp.asarray(tokens), passes)
    return _stream_jit(params, state, jnp.asarray(tokens), passes=passes)


def compiled_count() -> int:
    """How many distinct compilations `stream` holds (for checking it does not retrace)."""
    return _stream_jit._cache_size()


__all__ = ["IMPLS", "compiled_count", "stream"]
