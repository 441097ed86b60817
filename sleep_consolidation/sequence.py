"""The training form: a whole token sequence in windows, with sleep at every full window.

`forward` computes exactly what the streaming loop of `wake_sleep.py` computes (tested),
but with each window's pass done over all of its positions at once and the windows and
sleep passes looped with `loops.scan` (`lax.scan`, unrolled when short), so it can be
jitted and differentiated end to end.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from sleep_consolidation import model
from sleep_consolidation.config import (
    Schedule,
    check_loop,
    check_sleep_reaches,
    check_tokens,
    resolve_schedule,
)
from sleep_consolidation.layers import attention, loops
from sleep_consolidation.layers.norms import rms_norm
from sleep_consolidation.model import Params


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


# --- answer positions ---------------------------------------------------------------------
# Only the positions a loss reads (a task's answer positions) need logits. Two savings,
# both planned here: the unembedding runs at those positions only (`forward` gathers them),
# and in the last window, whose stack output nothing else reads when no sleep pass follows
# that reads it, the last block's residual and MLP run there only (`model.window_pass`'s
# `out_positions`).


def split_positions(positions, first_last: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(early, late): `positions` in the windows before `first_last` (read from their
    outputs) and, window-relative, in the last window, which then computes its output there
    only. late is None (the last window computes every position, and `forward` gathers)
    when no position is in it or `positions` is unsorted (the output order must be kept)."""
    if positions is None:
        return (), None
    late = tuple(p - first_last for p in positions if p >= first_last)
    if not late or positions != tuple(sorted(positions)):
        return positions, None
    return positions[: len(positions) - len(late)], late


def last_block_positions(out_positions, *, sleep, passes, stop, n_blocks):
    """Where `window_step` may compute its last block at `out_positions` only:
    (looped, post), the positions for the looped segment's `window_pass` or for the one
    after it (one of them None, or both). Not when a sleep pass follows and reads the
    looped blocks' full output (the last block looped, N > 1)."""
    if out_positions is None or (sleep and passes > 1 and stop == n_blocks):
        return None, None
    return (out_positions, None) if stop == n_blocks else (None, out_positions)


@flax.struct.dataclass
class WindowCarry:
    """What the training form carries from one window to the next.

    Dicts are keyed by block index (`cfg.ssm_blocks`, `cfg.attn_blocks`); both fields are
    arrays only, so the carry is a pytree that `lax.scan` and `jax.checkpoint` take as is.
    """

    fast: dict  # {ssm block: S [B, H, dh, dh] float32}: the memory that crosses the boundary
    prefix: dict  # {attn block: (k, v, valid)}: kept KV, P = L-1 (sliding) or 0 (hard)


def init_carry(cfg, batch: int, window: int, schedule: Schedule) -> WindowCarry:
    """Zero fast weights and an empty attention prefix (the state before the first window)."""
    fast = {
        b: jnp.zeros((batch, cfg.num_heads, cfg.dh, cfg.dh), jnp.float32) for b in cfg.ssm_blocks
    }
    P = window - 1 if schedule.eviction == "sliding" else 0
    z = jnp.zeros((batch, P, cfg.num_heads, cfg.dh), jnp.float32)
    prefix = {b: (z, z, jnp.zeros((P,), bool)) for b in cfg.attn_blocks}
    return WindowCarry(fast=fast, prefix=prefix)


def _mean_norm(h):
    """Mean over examples and positions of the feature vector's Euclidean norm."""
    return jnp.mean(jnp.linalg.norm(h, axis=-1))


def run_blocks(params, blocks, h, fast, prefix, record, out_positions=None):
    """`model.window_pass` over `blocks`, plus {ssm block: its normed input} when `record`
    (then run one block at a time: the same operations, so the same numbers)."""
    if not record:
        return (*model.window_pass(params, blocks, h, fast, prefix, None, out_positions), {})
    cfg = params.config
    kv, xs = {}, {}
    for i in blocks:
        if cfg.layout[i] == "ssm":
            xs[i] = rms_norm(h, params.blocks[i]["norm1"])
        h, fast, kv_i = model.window_pass(params, range(i, i + 1), h, fast, prefix)
        kv.update(kv_i)
    return h, fast, kv, xs


def window_step(
    params,
    carry: WindowCarry,
    toks,
    *,
    sched,
    window,
    passes,
    sleep,
    remat="none",
    grad_passes=None,
    record=False,
    out_positions=None,
):
    """Wake pass over one window, then, if `sleep`, N-1 sleep passes and eviction.

    Returns (carry, h): h [B, L, D] is the wake pass's stack output, from which the logits
    are read (after the loop over windows, so that only the positions asked for pay for
    the unembedding). `out_positions` (static window positions; not with `record`): h is
    read there only, so where nothing else reads the last block's output (no sleep pass
    follows that reads it), its residual and MLP run there only and h is [B, len, D].
    With `record` (static; for diagnostics) it returns (carry, h, aux):
      aux["fast"]: {ssm block: [n, B, H, dh, dh]} S after pass 1..n (n = N with `sleep`,
        else 1; a block outside the looped range keeps its wake value);
      aux["inputs"]: {ssm block: [B, L, D]} the block's normed input in the last pass that
        ran it (the input its keys and values were computed from);
      aux["h_norm"]: [n] the mean over (example, position) of |h| for the looped blocks'
        output after pass 1..n (what the next pass reads; its growth across passes is
        the looped-model instability to watch).
    Without `record` nothing extra is computed.
    """
    cfg = params.config
    start, stop = sched.loop_range(cfg)
    looped = range(start, stop)
    looped_ssm = [b for b in cfg.ssm_blocks if b in looped]
    fast, prefix = carry.fast, carry.prefix
    fast_start = dict(fast)
    n_blocks = len(cfg.layout)
    if record and out_positions is not None:
        raise ValueError("out_positions cannot be used with record")
    out_looped, out_post = last_block_positions(
        out_positions, sleep=sleep, passes=passes, stop=stop, n_blocks=n_blocks
    )

    h, fast, kv, xs = run_blocks(
        params, range(0, start), model.embed(params, toks), fast, prefix, record
    )
    loop_input = h
    h, fast, kv_loop, xs_loop = run_blocks(
        params, looped, h, fast, prefix, record, out_looped if sched.wake_passes == 1 else None
    )
    for k in range(1, sched.wake_passes):  # online depth: the looped blocks again, at wake
        x = model.sleep_input(sched, h, loop_input)
        source = {**fast, **{b: fast_start[b] for b in looped_ssm}}
        out = out_looped if k == sched.wake_passes - 1 else None
        h, fast, kv_loop, xs_loop = run_blocks(params, looped, x, source, prefix, record, out)
    features = h
    h, fast, kv_post, xs_post = run_blocks(
        params, range(stop, n_blocks), h, fast, prefix, record, out_post
    )
    if out_positions is not None and out_looped is None and out_post is None:
        h = model.take_positions(h, out_positions)
    kv = {**kv, **kv_loop, **kv_post}
    xs = {**xs, **xs_loop, **xs_post}
    fast_wake = fast

    def result(fast, prefix, xs, slept=None, h_norms=None):
        carry = WindowCarry(fast=fast, prefix=prefix)
        if not record:
            return carry, h
        n = 1 if slept is None else passes
        S = {b: jnp.broadcast_to(fast_wake[b], (n, *fast_wake[b].shape)) for b in cfg.ssm_blocks}
        for b, S_b in (slept or {}).items():  # looped blocks: S after each sleep pass
            S[b] = jnp.concatenate([fast_wake[b][None], S_b])
        h_norm = [_mean_norm(features)[None]] + ([h_norms] if h_norms is not None else [])
        return carry, h, {"fast": S, "inputs": xs, "h_norm": jnp.concatenate(h_norm)}

    if not sleep:
        return result(fast, prefix, xs)

    def sleep_pass(p, inp, carry, _):
        h, fast_l, kv_l, _ = carry
        source = {b: fast_start[b] for b in looped_ssm} if sched.reset_between_passes else fast_l
        x = model.sleep_input(sched, h, inp)
        h, fast_new, kv_new, xs_new = run_blocks(p, looped, x, source, prefix, record)
        fast_new = {b: fast_new[b] for b in looped_ssm}
        return (h, fast_new, kv_new, xs_new), ((fast_new, _mean_norm(h)) if record else None)

    if remat in ("pass", "window+pass"):
        sleep_pass = jax.checkpoint(sleep_pass)
    # Under remat the pass loop stays a lax.scan: unrolled, XLA kept every pass's
    # activations anyway (415 MiB with and without remat="pass" at N=8; BUILD_NOTES.md).
    unroll = 0 if remat != "none" else None
    carry_l = (features, {b: fast[b] for b in looped_ssm}, kv_loop, xs_loop)
    per_pass = []  # with `record`: per scan, {looped ssm block: S after each of its passes}
    n_sleep = passes - 1
    # Truncated gradients: only the last `grad_passes` passes of the window are differentiated.
    # Earlier sleep passes run on stop-gradient params (no residuals stored); the fast weights
    # entering the first differentiated pass keep a straight-through path to the window's
    # incoming fast weights, so credit still reaches earlier windows.
    n_free = 0 if grad_passes is None else max(0, min(n_sleep, passes - grad_passes - 1))
    if n_free:
        p_sg, inp_sg, carry_sg = jax.lax.stop_gradient((params, loop_input, carry_l))
        # (not `h`: that is the wake output the logits are read from)
        (h_l, fast_l, kv_l, xs_l), ys = loops.scan(
            lambda c, x: sleep_pass(p_sg, inp_sg, c, x),
            carry_sg,
            None,
            length=n_free,
            max_unroll=unroll,
        )
        per_pass += [ys] if record else []
        fast_l = {
            b: fast_start[b] + jax.lax.stop_gradient(fast_l[b] - fast_start[b]) for b in looped_ssm
        }
        carry_l = (h_l, fast_l, kv_l, xs_l)
    if n_sleep - n_free:
        carry_l, ys = loops.scan(
            lambda c, x: sleep_pass(params, loop_input, c, x),
            carry_l,
            None,
            length=n_sleep - n_free,
            max_unroll=unroll,
        )
        per_pass += [ys] if record else []
    _, fast_l, kv_l, xs_l = carry_l
    fast = {**fast, **fast_l}
    kv = {**kv, **kv_l}
    if sched.eviction == "sliding":
        prefix = {
            b: attention.slide_prefix(*prefix[b], kv[b][0], kv[b][1], window, cfg.rope_base)
            for b in cfg.attn_blocks
        }
    if not per_pass:
        return result(fast, prefix, {**xs, **xs_l}, {})
    slept = {b: jnp.concatenate([ys[0][b] for ys in per_pass]) for b in looped_ssm}
    h_norms = jnp.concatenate([ys[1] for ys in per_pass])
    return result(fast, prefix, {**xs, **xs_l}, slept, h_norms)


def check_static(**args) -> None:
    """window, passes and grad_passes fix the program's shape (how many windows, how many
    passes), so they must be Python ints, not values traced by `jax.jit`.

    Raises:
      TypeError: naming the traced arguments and the `static_argnames` that fixes it.
    """
    traced = [name for name, v in args.items() if isinstance(v, jax.core.Tracer)]
    if traced:
        names = ", ".join(repr(n) for n in traced)
        raise TypeError(
            f"forward: {names} got a traced value; they set the program's shape and must be "
            "static Python ints: mark them static, e.g. "
            'jax.jit(sc.forward, static_argnames=("window", "passes"))'
        )


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
      remat: "none", "pass" (recompute each sleep pass in backprop), "window" (recompute
        each window) or "window+pass" (both, nested: the least memory at N > 1, nearly
        flat in N from N = 2).
      grad_passes: if set, differentiate only the last k passes of each window's
        consolidation (truncated backprop); None = full backprop through every pass.
      return_fast: also return the fast weights after the sequence (a last full window is
        then consolidated too), {ssm block: S} as `MemoryState.fast`.
      positions: static tuple of positions to return logits for (e.g. a task's
        `answer_positions`); None = every position. Only these pay for the unembedding,
        which dominates the loss at research scale (V > D, few answer tokens).

    Returns:
      logits [B, T, V] float32, or [B, len(positions), V] (and the fast-weight dict if
      `return_fast`).
    """
    cfg = params.config
    schedule = resolve_schedule(schedule, schedule_kwargs)
    check_static(window=window, passes=passes, grad_passes=grad_passes)
    check_loop(window, passes, remat=remat, grad_passes=grad_passes, schedule=schedule)
    schedule.loop_range(cfg)
    check_tokens(tokens, cfg.vocab_size, rank=2)
    B, T = tokens.shape
    if T < 1:
        raise ValueError("tokens must hold at least one position")
    positions = check_positions(positions, T)
    # With N = 1 a window that never fills is the plain hybrid, not an error; with
    # return_fast a last full window is consolidated, so the returned fast weights see sleep.
    if passes > 1 and not (return_fast and T >= window):
        # The whole sequence, not `positions`: a caller may ask for early positions only.
        check_sleep_reaches(window, T, what="outputs")
    L = window
    n_scan = (T - 1) // L  # windows followed by more tokens: all full, all consolidated
    step = lambda carry, toks, sleep, out_positions=None: window_step(
        params,
        carry,
        toks,
        sched=schedule,
        window=L,
        passes=passes,
        sleep=sleep,
        remat=remat,
        grad_passes=grad_passes,
        out_positions=out_positions,
    )
    by_window = remat in ("window", "window+pass")
    if by_window:
        step = jax.checkpoint(step, static_argnums=(2, 3))
    early, late = split_positions(positions, n_scan * L)
    carry = init_carry(cfg, B, L, schedule)
    pieces = []
    if n_scan:
        scanned = tokens[:, : n_scan * L].reshape(B, n_scan, L).swapaxes(0, 1)
        carry, hs = loops.scan(
            lambda c, t: step(c, t, True, None), carry, scanned,
            max_unroll=0 if by_window else None,
        )  # fmt: skip
        pieces.append(hs.swapaxes(0, 1).reshape(B, n_scan * L, -1))
    last = tokens[:, n_scan * L :]
    carry, h = step(carry, last, return_fast and last.shape[1] == L, late)
    if late is not None:
        pieces = [model.take_positions(pieces[0], early)] if early else []
    pieces.append(h)
    h = jnp.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]
    if positions is not None and late is None:
        h = model.take_positions(h, positions)
    logits = model.logits(params, h)
    if return_fast:
        return logits, carry.fast
    return logits
