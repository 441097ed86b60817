"""Adaptive sleep (streaming form): sleep while it pays, judged by the fast weights' own
recall of the window, with no labels.

    state, logits = wake_step(params, state, tok)  # ... until window_full(state)
    state, passes = adaptive_sleep(params, state, eps=1e-3, max_passes=8)   # passes: [B]
    state = evict(state)

The criterion (`window_recall`): per example, the mean over the looped ssm layers, heads
and filled window positions of cos(S^T k_t, v_t), where S is the state's fast weights and
k_t, v_t the keys and values the window presents to that layer now, i.e. those the next
sleep pass would write, computed from the state's features with the block's own
projections (`diagnostics.block_keys_values`; the read-out is `diagnostics`' recall
statistic). It is a pure function of (params, state), so a state and the one a pass makes
from it are scored by the same rule.

Each example sleeps one pass at a time (`sleep_step`); a pass is kept only if it raises the
example's criterion by more than eps (eps is clamped at 0, so a pass that makes it worse,
or no better, is always rolled back), and the example stops at the first pass that is not
kept, or at max_passes. Returned: the state after the kept passes, and N per example
(1 + kept sleep passes, the paper's count: N = 1 is no sleep). Costs per attempted pass:
one pass, plus one for the criterion.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sleep_consolidation import model, sequence
from sleep_consolidation.analysis import diagnostics
from sleep_consolidation.model import Params
from sleep_consolidation.state import MemoryState, check_state
from sleep_consolidation.wake_sleep import sleep_step

# The fields a sleep pass may change (all with a leading batch axis): an example's rollback
# restores its slice of each. The prefix and conv buffers are not touched by sleep.
_SLEPT = ("fast", "kv", "features")


def _looped_ssm(cfg, state) -> list[int]:
    start, stop = state.schedule.loop_range(cfg)
    return [b for b in cfg.ssm_blocks if start <= b < stop]


def window_keys_values(params: Params, state: MemoryState) -> dict[int, tuple]:
    """The keys and values the window presents to each looped ssm block now: those the next
    `sleep_step` would write, from its input (the state's features, plus the wake input
    under re-injection) run through the looped blocks one at a time.

    Returns:
      {block index: (k, v)}, each [B, L, H, dh]; positions past `state.pos` are zero.
    """
    cfg = params.config
    sched = state.schedule
    start, stop = sched.loop_range(cfg)
    source = state.fast_at_window_start if sched.reset_between_passes else state.fast
    fast_in = dict(source)
    x = model.sleep_input(sched, state.features, state.loop_input)
    # sequence's recording block loop: each ssm block's normed input, as the pass sees it
    _, _, _, xs = sequence.run_blocks(
        params, range(start, stop), x, fast_in, state.prefix, record=True
    )
    valid = (jnp.arange(state.window) < state.pos)[None, :, None, None]
    out = {}
    for b in _looped_ssm(cfg, state):
        k, v = diagnostics.block_keys_values(params.blocks[b]["mixer"], cfg, xs[b])
        out[b] = (jnp.where(valid, k, 0.0), jnp.where(valid, v, 0.0))
    return out


def window_recall(params: Params, state: MemoryState) -> jax.Array:
    """The adaptive-sleep criterion: per example, the mean cosine of S^T k_t against v_t
    over the looped ssm layers, heads and filled positions (`window_keys_values`).

    Returns:
      float32 [B]; 0 for a model with no looped ssm block or an empty window.
    """
    cfg = params.config
    check_state(state, cfg, caller="window_recall")
    B = state.features.shape[0]
    kv = window_keys_values(params, state)
    if not kv:
        return jnp.zeros((B,), jnp.float32)
    # diagnostics' statistic averages over all L positions; a zeroed (unfilled) position
    # reads 0, so rescaling by L / pos gives the mean over the filled ones.
    per_example = jax.vmap(lambda S, k, v: diagnostics.recall_stats(S[None], k[None], v[None])[0])
    cos = [per_example(state.fast[b], k, v) for b, (k, v) in kv.items()]
    scale = state.window / jnp.maximum(state.pos, 1).astype(jnp.float32)
    return jnp.mean(jnp.stack(cos), axis=0) * scale


def _select(keep, new: MemoryState, old: MemoryState) -> MemoryState:
    """Per example: `new` where keep [B] is True, else `old`."""

    def pick(a, b):
        return jnp.where(keep.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    fields = {f: jax.tree_util.tree_map(pick, getattr(new, f), getattr(old, f)) for f in _SLEPT}
    return old.replace(**fields)


@functools.partial(jax.jit, static_argnames="max_passes")
def adaptive_sleep(
    params: Params, state: MemoryState, eps, max_passes: int
) -> tuple[MemoryState, jax.Array]:
    """Sleeps each example of a (full) window while its `window_recall` improves by more
    than `eps` per pass, up to `max_passes` passes in all; a pass that does not is rolled
    back and ends that example's sleep.

    Args:
      params: slow weights; state: the streaming state after the wake pass (or after
        earlier sleep passes); eps: the least gain per pass (clamped at 0, traced);
      max_passes: N_max >= 1 counting the wake pass (static), as `passes` elsewhere.

    Returns:
      (state, passes): the state after each example's kept sleep passes, and int32 [B]
      with N = 1 + the kept sleep passes of each example (1 <= N <= max_passes).
    """
    if isinstance(max_passes, bool) or not isinstance(max_passes, int) or max_passes < 1:
        raise ValueError(f"max_passes must be an int >= 1, got {max_passes!r}")
    check_state(state, params.config, caller="adaptive_sleep")
    B = state.features.shape[0]
    eps = jnp.maximum(jnp.asarray(eps, jnp.float32), 0.0)

    def cond(carry):
        _, _, _, active, i = carry
        return (i < max_passes - 1) & jnp.any(active)

    def body(carry):
        s, score, passes, active, i = carry
        new = sleep_step(params, s)
        new_score = window_recall(params, new)
        keep = active & (new_score > score + eps)
        return (_select(keep, new, s), jnp.where(keep, new_score, score),
                passes + keep.astype(jnp.int32), keep, i + 1)  # fmt: skip

    init = (state, window_recall(params, state), jnp.ones((B,), jnp.int32),
            jnp.ones((B,), bool), jnp.zeros((), jnp.int32))  # fmt: skip
    s, _, passes, _, _ = jax.lax.while_loop(cond, body, init)
    return s, passes


__all__ = ["adaptive_sleep", "window_keys_values", "window_recall"]
