"""The streaming form: `wake_step`, `sleep_step`, `evict`, `window_full`.

    state, logits_t = wake_step(params, state, tokens[:, t])      # one pass per token
    if window_full(state):
        for _ in range(N - 1):
            state = sleep_step(params, state)                     # offline pass, no tokens
        state = evict(state)                                      # keep only fast weights

All functions are pure and jit-able; the schedule rides in `state.schedule` (static).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sleep_consolidation import model
from sleep_consolidation.config import check_tokens
from sleep_consolidation.layers import attention
from sleep_consolidation.model import Params
from sleep_consolidation.state import MemoryState, check_state


def window_full(state: MemoryState) -> jax.Array:
    """Scalar bool: the window holds L tokens and must sleep and be evicted before the next."""
    return state.pos >= state.window


def wake_step(params: Params, state: MemoryState, tokens) -> tuple[MemoryState, jax.Array]:
    """Reads one token per stream (one pass through every block) and predicts the next.

    Args:
      params: slow weights.
      state: streaming state whose window is not full, built for `params.config`
        (`init_state`); a state of another shape raises ValueError naming the field.
      tokens: int [B] token ids at this position.

    Returns:
      (new state, logits [B, V]). On a full window this raises ValueError when `state.pos`
      is concrete; inside jit it cannot be checked on the host, and the write (clamped onto
      the window's last position) would be silently wrong, so that step's logits are NaN
      instead (the state after it is not meaningful: sleep and evict before the next token).
    """
    cfg = params.config
    check_state(state, cfg, caller="wake_step")
    check_tokens(tokens, cfg.vocab_size, rank=1)
    if tokens.shape[0] != state.features.shape[0]:
        raise ValueError(
            f"tokens has batch {tokens.shape[0]} but the state has {state.features.shape[0]}"
        )
    if not isinstance(state.pos, jax.core.Tracer) and int(state.pos) >= state.window:
        raise ValueError("wake_step on a full window: call sleep_step (optional) and evict first")
    start, stop = state.schedule.loop_range(cfg)
    i = state.pos
    fast, conv, kv = dict(state.fast), dict(state.conv), dict(state.kv)
    put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[:, None], i, axis=1)

    h = model.embed(params, tokens)
    loop_input, features = state.loop_input, state.features
    for b in range(len(cfg.layout)):
        if b == start:
            loop_input = put(loop_input, h)
        if b in fast:
            h, fast[b], _, conv[b] = model.block_step(params, b, h, i, fast[b], None, None, conv[b])
        else:
            h, _, kv[b], _ = model.block_step(params, b, h, i, None, kv[b], state.prefix[b], None)
        if b == stop - 1:
            features = put(features, h)
    new_state = state.replace(
        fast=fast, conv=conv, kv=kv, features=features, loop_input=loop_input, pos=i + 1
    )
    overfull = i >= state.window  # only possible inside jit (else refused above)
    return new_state, jnp.where(overfull, jnp.nan, model.logits(params, h))


def sleep_step(params: Params, state: MemoryState) -> MemoryState:
    """One offline pass of the looped blocks over the filled part of the window, no tokens.

    Reads the features of the previous pass (plus the wake input if re-injection is on),
    starts from the current fast weights (or the window's initial ones if
    reset_between_passes), rewrites the fast weights and refreshes features and KV.
    """
    cfg = params.config
    check_state(state, cfg, caller="sleep_step")
    sched = state.schedule
    start, stop = sched.loop_range(cfg)
    looped = range(start, stop)
    valid = jnp.arange(state.window) < state.pos
    source = state.fast_at_window_start if sched.reset_between_passes else state.fast
    fast_in = {b: source[b] for b in source if b in looped}
    x = model.sleep_input(sched, state.features, state.loop_input)
    h, fast, kv = model.window_pass(params, looped, x, fast_in, state.prefix, valid)
    return state.replace(
        fast={**state.fast, **fast},
        kv={**state.kv, **kv},
        features=jnp.where(valid[None, :, None], h, 0.0),
    )


def evict(state: MemoryState) -> MemoryState:
    """Ends the window: drops KV, features and conv buffers; only the fast weights stay.

    Under sliding eviction the most recent L-1 tokens' keys/values are kept as the next
    window's prefix, re-rotated so that positions stay relative to the new window.
    Takes no config, so it checks only that the state's arrays agree with each other.
    """
    check_state(state, caller="evict")
    zeros = jax.tree_util.tree_map(jnp.zeros_like, state)
    new = zeros.replace(fast=state.fast, fast_at_window_start=state.fast)
    if state.schedule.eviction == "sliding":
        prefix = {
            b: attention.slide_prefix(*state.prefix[b], *state.kv[b], state.pos, state.rope_base)
            for b in state.prefix
        }
        new = new.replace(prefix=prefix)
    return new
