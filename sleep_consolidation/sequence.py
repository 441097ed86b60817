"""The training form: a whole token sequence in windows, with sleep at every full window.

`forward` computes exactly what the streaming loop of `wake_sleep.py` computes (tested),
but with each window's pass done over all of its positions at once and the windows and
sleep passes looped with `loops.scan` (`lax.scan`, unrolled when short), so it can be
jitted and differentiated end to end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sleep_consolidation import attention, loops, model
from sleep_consolidation.config import (
    Schedule,
    check_grad_passes,
    check_tokens,
    check_window_and_passes,
)
from sleep_consolidation.model import Params

REMAT_MODES = ("none", "pass", "window")


def check_positions(positions, length: int) -> tuple[int, ...] | None:
    """Validates a static tuple of positions in [0, length) (None passes through)."""
    if positions is None:
        return None
    try:
        out = tuple(int(p) for p in positions)
    except TypeError as e:
        raise ValueError(f"positions must be a tuple of ints or None, got {positions!r}") from e
    if not out or any(p < 0 or p >= length for p in out):
        raise ValueError(f"positions must be a non-empty tuple in [0, {length}), got {positions!r}")
    if any(isinstance(p, bool) for p in positions):
        raise ValueError(f"positions must be ints, got {positions!r}")
    return out


def _empty_prefix(cfg, batch, window, sliding):
    P = window - 1 if sliding else 0
    z = jnp.zeros((batch, P, cfg.num_heads, cfg.dh), jnp.float32)
    return {b: (z, z, jnp.zeros((P,), bool)) for b in cfg.attn_blocks}


def _window_step(params, carry, toks, *, sched, window, passes, sleep, remat, grad_passes):
    """Wake pass over one window, then, if `sleep`, N-1 sleep passes and eviction.

    Returns (carry, h): h [B, L, D] is the wake pass's stack output, from which the logits
    are read (after the loop over windows, so that only the positions asked for pay for
    the unembedding)."""
    cfg = params.config
    start, stop = sched.loop_range(cfg)
    looped = range(start, stop)
    looped_ssm = [b for b in cfg.ssm_blocks if b in looped]
    fast, prefix = carry
    fast_start = dict(fast)

    h, fast, kv = model.window_pass(
        params, range(0, start), model.embed(params, toks), fast, prefix
    )
    loop_input = h
    h, fast, kv_loop = model.window_pass(params, looped, h, fast, prefix)
    features = h
    h, fast, kv_post = model.window_pass(params, range(stop, len(cfg.layout)), h, fast, prefix)
    kv = {**kv, **kv_loop, **kv_post}
    if not sleep:
        return (fast, prefix), h

    def sleep_pass(p, carry, _):
        h, fast_l, kv_l = carry
        source = {b: fast_start[b] for b in looped_ssm} if sched.reset_between_passes else fast_l
        x = h + loop_input if sched.reinject_embedding else h
        h, fast_new, kv_new = model.window_pass(p, looped, x, source, prefix)
        return (h, {b: fast_new[b] for b in looped_ssm}, kv_new), None

    if remat == "pass":
        sleep_pass = jax.checkpoint(sleep_pass)
    carry_l = (features, {b: fast[b] for b in looped_ssm}, kv_loop)
    n_sleep = passes - 1
    # Truncated gradients: only the last `grad_passes` passes of the window are differentiated.
    # Earlier sleep passes run on stop-gradient params (no residuals stored); the fast weights
    # entering the first differentiated pass keep a straight-through path to the window's
    # incoming fast weights, so credit still reaches earlier windows.
    n_free = 0 if grad_passes is None else max(0, min(n_sleep, passes - grad_passes - 1))
    if n_free:
        frozen = jax.lax.stop_gradient((params, loop_input, carry_l))
        p_sg, loop_input_sg, carry_sg = frozen
        (h, fast_l, kv_l), _ = loops.scan(
            lambda c, x: sleep_pass(p_sg, c, x), carry_sg, None, length=n_free
        )
        fast_l = {
            b: fast_start[b] + jax.lax.stop_gradient(fast_l[b] - fast_start[b]) for b in looped_ssm
        }
        carry_l = (h, fast_l, kv_l)
    if n_sleep - n_free:
        carry_l, _ = loops.scan(
            lambda c, x: sleep_pass(params, c, x), carry_l, None, length=n_sleep - n_free
        )
    _, fast_l, kv_l = carry_l
    fast = {**fast, **fast_l}
    kv = {**kv, **kv_l}
    if sched.eviction == "sliding":
        prefix = {
            b: attention.slide_prefix(*prefix[b], kv[b][0], kv[b][1], window, cfg.rope_base)
            for b in cfg.attn_blocks
        }
    return (fast, prefix), h


def _take_positions(h, positions):
    """h[:, positions] as slices of contiguous runs (a gather's gradient is a scatter, which
    is slow on CPU; the answer positions of the tasks are a few runs)."""
    runs, start = [], 0
    for i in range(1, len(positions) + 1):
        if i == len(positions) or positions[i] != positions[i - 1] + 1:
            runs.append(h[:, positions[start] : positions[i - 1] + 1])
            start = i
    return runs[0] if len(runs) == 1 else jnp.concatenate(runs, axis=1)


def forward(
    params: Params,
    tokens,
    window: int,
    passes: int = 1,
    *,
    schedule: Schedule | None = None,
    remat: str = "none",
    grad_passes: int | None = None,
    return_fast: bool = False,
    positions: tuple[int, ...] | None = None,
    **schedule_kwargs,
):
    """Logits of the streaming model for a whole sequence (training form).

    Every full window of `window` tokens that is followed by more tokens is consolidated with
    `passes` passes (the wake pass + passes-1 sleep passes) and evicted; `logits[:, t]` is
    the prediction made at wake time on reading token t (one pass).

    Args:
      params: slow weights (`init_params`).
      tokens: int [B, T].
      window: L, the KV window (static).
      passes: N >= 1; N=1 is the vanilla hybrid (static).
      schedule: a `Schedule`, or its fields as keywords (eviction, reset_between_passes,
        reinject_embedding, loop_blocks).
      remat: "none", "pass" (recompute each sleep pass in backprop) or "window".
      grad_passes: if set, differentiate only the last k passes of each window's
        consolidation (truncated backprop); None = full backprop through every pass.
      return_fast: also return the fast weights after the sequence (a last full window is
        then consolidated too), as a tuple ordered like `cfg.ssm_blocks`.
      positions: static tuple of positions to return logits for (e.g. a task's
        `answer_positions`); None = every position. Only these pay for the unembedding,
        which dominates the loss at research scale (V > D, few answer tokens).

    Returns:
      logits [B, T, V] float32, or [B, len(positions), V] (and the fast-weight tuple if
      `return_fast`).
    """
    cfg = params.config
    if schedule is None:
        schedule = Schedule(**schedule_kwargs)
    elif schedule_kwargs:
        raise ValueError("pass either schedule= or its fields as keywords, not both")
    check_window_and_passes(window, passes)
    schedule.loop_range(cfg)
    if remat not in REMAT_MODES:
        raise ValueError(f"remat must be one of {REMAT_MODES}, got {remat!r}")
    check_grad_passes(grad_passes, passes)
    check_tokens(tokens, cfg.vocab_size, rank=2)
    B, T = tokens.shape
    if T < 1:
        raise ValueError("tokens must hold at least one position")
    positions = check_positions(positions, T)
    L = window
    n_scan = (T - 1) // L  # windows followed by more tokens: all full, all consolidated
    step = lambda carry, toks, sleep: _window_step(
        params,
        carry,
        toks,
        sched=schedule,
        window=L,
        passes=passes,
        sleep=sleep,
        remat=remat,
        grad_passes=grad_passes,
    )
    if remat == "window":
        step = jax.checkpoint(step, static_argnums=(2,))
    fast0 = {b: jnp.zeros((B, cfg.num_heads, cfg.dh, cfg.dh), jnp.float32) for b in cfg.ssm_blocks}
    carry = (fast0, _empty_prefix(cfg, B, L, schedule.eviction == "sliding"))
    pieces = []
    if n_scan:
        scanned = tokens[:, : n_scan * L].reshape(B, n_scan, L).swapaxes(0, 1)
        carry, hs = loops.scan(lambda c, t: step(c, t, True), carry, scanned)
        pieces.append(hs.swapaxes(0, 1).reshape(B, n_scan * L, -1))
    last = tokens[:, n_scan * L :]
    carry, h = step(carry, last, return_fast and last.shape[1] == L)
    pieces.append(h)
    h = jnp.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]
    if positions is not None:
        h = _take_positions(h, positions)
    logits = model.logits(params, h)
    if return_fast:
        return logits, tuple(carry[0][b] for b in cfg.ssm_blocks)
    return logits
