"""Consolidation diagnostics: what sleep does to the fast weights, and whether it helps.

    change = fast_weight_change_per_pass(params, tokens, window=L, passes=N)  # [W, N-1, n_ssm]
    recall = recall_of_evicted_window(params, tokens, window=L, passes=N)     # dict of arrays
    results, flags = memory_conditions(params, batch, task.depths, window=L, passes=N)
    # plotting: experiments/plots.py (plot_consolidation)

W is the number of full windows in `tokens` (a trailing partial window is never consolidated
and gives no statistics); n_ssm the ssm blocks in `cfg.ssm_blocks` order. Every function
takes the schedule as `schedule=` or its fields as keywords, like `forward`.

Two evaluation paths, checked against each other and against `forward` in the tests:
  * `fast_weight_change_per_pass` streams the tokens with the library's own `wake_step`,
    `sleep_step` and `evict` (one jitted program, `lax.scan` over windows and tokens);
  * `window_loop` runs `forward`'s own window step (`sequence.window_step`, asked to
    record each ssm block's input and the fast weights after every pass) and applies a hook
    to the fast weights at every window boundary (after consolidation and eviction). With
    no hook its logits equal `forward`'s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from sleep_consolidation import model, sequence
from sleep_consolidation.config import (
    Schedule,
    check_loop,
    check_tokens,
    resolve_schedule,
)
from sleep_consolidation.layers import fast_weights
from sleep_consolidation.model import Params
from sleep_consolidation.state import init_state
from sleep_consolidation.tasks.base import per_depth_metrics
from sleep_consolidation.wake_sleep import evict, sleep_step, wake_step

BOUNDARIES = ("none", "zero", "roll")
CONDITIONS = ("no_sleep", "trained_N", "no_memory", "wrong_memory")
FLAG = "consolidation worse than no memory"
_EPS = 1e-12


def _check_full_window(tokens, window):
    if tokens.shape[1] < window:
        raise ValueError(f"tokens hold no full window: T={tokens.shape[1]} < window={window}")


def _rel_change(before, after):
    """Per-example ||after - before||_F / ||before||_F over [H, dk, dv], batch mean."""
    axes = tuple(range(1, before.ndim))
    diff = jnp.sqrt(jnp.sum((after - before) ** 2, axis=axes))
    norm = jnp.sqrt(jnp.sum(before**2, axis=axes))
    return jnp.mean(diff / jnp.maximum(norm, _EPS))


def _stack_layers(values, n_ssm, shape_prefix):
    if n_ssm == 0:
        return jnp.zeros((*shape_prefix, 0), jnp.float32)
    return jnp.stack(values, axis=-1)


# --- streaming path --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("window", "passes", "schedule"))
def _stream_changes(params, tokens, window, passes, schedule):
    cfg = params.config
    B, T = tokens.shape
    n = T // window
    n_ssm = len(cfg.ssm_blocks)
    state = init_state(cfg, batch_size=B, window=window, schedule=schedule)
    toks = tokens[:, : n * window].reshape(B, n, window).transpose(1, 2, 0)  # [W, L, B]

    def sleep(s, _):
        s_new = sleep_step(params, s)
        ch = [_rel_change(s.fast[b], s_new.fast[b]) for b in cfg.ssm_blocks]
        return s_new, _stack_layers(ch, n_ssm, ())

    def per_window(s, toks_w):
        s, _ = jax.lax.scan(lambda c, t: (wake_step(params, c, t)[0], None), s, toks_w)
        s, ch = jax.lax.scan(sleep, s, None, length=passes - 1)
        return evict(s), ch

    _, changes = jax.lax.scan(per_window, state, toks)
    return changes.reshape(n, passes - 1, n_ssm)


def fast_weight_change_per_pass(
    params: Params, tokens, window: int, passes: int, *, schedule=None, **schedule_kwargs
):
    """Relative change of every ssm layer's fast weights in every sleep pass.

    Streams `tokens` with `wake_step` / `sleep_step` / `evict` (jitted). For full window w,
    sleep pass p (p = 2..N, i.e. index p-2) and ssm layer j the entry is
    mean_b ||S_after - S_before||_F / ||S_before||_F, with S_before = `state.fast[b]` just
    before that `sleep_step` (the previous pass's result) and the norm over [H, dk, dv] of
    example b. Layers outside `loop_blocks` do not sleep (change 0).

    Args:
      params: slow weights; tokens: int [B, T]; window: L; passes: N (static).

    Returns:
      float32 [num_windows = T // L, N - 1, num_ssm_layers].
    """
    sched = resolve_schedule(schedule, schedule_kwargs)
    check_loop(window, passes)
    check_tokens(tokens, params.config.vocab_size, rank=2)
    _check_full_window(tokens, window)
    sched.loop_range(params.config)
    return _stream_changes(params, jnp.asarray(tokens), window, passes, sched)


# --- the window loop with hooks --------------------------------------------------------------


def block_keys_values(mixer: dict, cfg, x):
    """The keys and values an ssm block writes for normed inputs x [B, T, D] (window start at
    position 0, empty conv buffer): projections -> causal conv -> SiLU, keys L2-normalised;
    the computation of `fast_weights.fast_weight_window`. Returns (k, v), each [B, T, H, dh]."""
    _, k, v, _, _, _ = fast_weights.window_features(mixer, cfg, x)
    return k, v


def zero_memory(fast: dict) -> dict:
    """Boundary hook: no memory crosses the boundary."""
    return jax.tree_util.tree_map(jnp.zeros_like, fast)


def roll_memory(fast: dict) -> dict:
    """Boundary hook: example b gets the (real, consolidated) memory of example b-1."""
    return jax.tree_util.tree_map(lambda s: jnp.roll(s, 1, axis=0), fast)


_HOOKS = {"none": None, "zero": zero_memory, "roll": roll_memory}


def recall_stats(S, k, v):
    """Cosine and relative error of S^T k_t vs v_t: S [B,H,dk,dv]; k, v [B,T,H,d]."""
    r = jnp.einsum("bhkv,bthk->bthv", S, k)
    rn = jnp.linalg.norm(r, axis=-1)
    vn = jnp.linalg.norm(v, axis=-1)
    cos = jnp.sum(r * v, axis=-1) / jnp.maximum(rn * vn, _EPS)
    err = jnp.linalg.norm(r - v, axis=-1) / jnp.maximum(vn, _EPS)
    return jnp.mean(cos), jnp.mean(err)


def _window(params, carry, toks, mode, *, sched, window, passes, sleep, hook, stats):
    """`sequence.window_step` (recording when `stats`), its logits, the window's statistics
    and the boundary: mode 0 keeps the memory, 1 zeroes it, 2 rolls it over the batch; a
    static `hook` (any function of the fast-weight dict) is applied after that."""
    cfg = params.config
    fast_start = carry.fast
    out = sequence.window_step(
        params, carry, toks, sched=sched, window=window, passes=passes, sleep=sleep, record=stats
    )
    carry, h = out[:2]
    logits = model.logits(params, h)
    if not sleep:
        return carry, logits, None

    stats_out = None
    if stats:
        aux, n_ssm = out[2], len(cfg.ssm_blocks)
        cos, err, cos0, err0, change, s_norm = [], [], [], [], [], []
        for b in cfg.ssm_blocks:
            S_pass = aux["fast"][b]  # [N, B, H, dk, dv]: S after pass 1..N (wake = pass 1)
            k, v = block_keys_values(params.blocks[b]["mixer"], cfg, aux["inputs"][b])
            c, e = jax.vmap(lambda S, k=k, v=v: recall_stats(S, k, v))(S_pass)
            c0, e0 = recall_stats(fast_start[b], k, v)
            cos.append(c), err.append(e), cos0.append(c0), err0.append(e0)
            change.append(jax.vmap(_rel_change)(S_pass[:-1], S_pass[1:]))
            s_norm.append(jnp.mean(jnp.sqrt(jnp.sum(S_pass**2, axis=(2, 3, 4))), axis=1))
        stats_out = {
            "cosine": _stack_layers(cos, n_ssm, (passes,)),
            "rel_error": _stack_layers(err, n_ssm, (passes,)),
            "cosine_at_window_start": _stack_layers(cos0, n_ssm, ()),
            "rel_error_at_window_start": _stack_layers(err0, n_ssm, ()),
            "change": _stack_layers(change, n_ssm, (passes - 1,)),
            "fast_norm": _stack_layers(s_norm, n_ssm, (passes,)),
            "h_norm": aux["h_norm"],
        }

    S = jax.tree_util.tree_map(
        lambda s, zero, rolled: jnp.where(mode == 1, zero, jnp.where(mode == 2, rolled, s)),
        carry.fast, zero_memory(carry.fast), roll_memory(carry.fast),
    )  # fmt: skip
    if hook is not None:
        S = dict(hook(S))
    carry = carry.replace(fast=S)
    return carry, logits, stats_out


@functools.partial(jax.jit, static_argnames=("window", "passes", "schedule", "hook", "stats"))
def _loop(params, tokens, mode, *, window, passes, schedule, hook, stats):
    cfg = params.config
    B, T = tokens.shape
    L = window
    n_scan = T // L  # every full window is consolidated (the last one too)
    step = functools.partial(
        _window, sched=schedule, window=L, passes=passes, hook=hook, stats=stats
    )
    carry = sequence.init_carry(cfg, B, L, schedule)
    pieces, out = [], None
    if n_scan:
        scanned = tokens[:, : n_scan * L].reshape(B, n_scan, L).swapaxes(0, 1)

        def body(c, t):
            c, lg, o = step(params, c, t, mode, sleep=True)
            return c, (lg, o)

        carry, (lg, out) = jax.lax.scan(body, carry, scanned)
        pieces.append(lg.swapaxes(0, 1).reshape(B, n_scan * L, -1))
    if n_scan * L < T:
        _, lg, _ = step(params, carry, tokens[:, n_scan * L :], mode, sleep=False)
        pieces.append(lg)
    logits = jnp.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]
    return logits, out, carry.fast


def window_loop(
    params: Params,
    tokens,
    window: int,
    passes: int = 1,
    *,
    boundary: str | Callable | None = None,
    stats: bool = False,
    schedule: Schedule | None = None,
    **schedule_kwargs,
):
    """`forward` (training form) with a hook on the memory at every window boundary.

    Every full window is consolidated with `passes` passes and evicted (also the last one,
    which does not change any logit); a trailing partial window gets its wake pass only.

    Args:
      boundary: what happens to the fast weights after each window's consolidation and
        eviction, before the next window: None / "none" (nothing: the logits equal
        `forward`'s), "zero" (`zero_memory`), "roll" (`roll_memory`: the memory of another
        example of the batch), or a function of the fast weights {ssm block: S} returning
        the same structure (static: pass the same function object to avoid recompiling).
      stats: also compute, per full window, the statistics of `recall_of_evicted_window`
        and the per-pass change ("change" [W, N-1, n_ssm]).

    Returns:
      (logits [B, T, V], stats dict or None, final fast weights {ssm block: S}).
    """
    sched = resolve_schedule(schedule, schedule_kwargs)
    check_loop(window, passes)
    cfg = params.config
    sched.loop_range(cfg)
    check_tokens(tokens, cfg.vocab_size, rank=2)
    if boundary is None or isinstance(boundary, str):
        name = "none" if boundary is None else boundary
        if name not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES} or a function, got {name!r}")
        mode, hook = BOUNDARIES.index(name), None
    elif callable(boundary):
        mode, hook = 0, boundary
    else:
        raise ValueError(f"boundary must be one of {BOUNDARIES} or a function, got {boundary!r}")
    if mode == 2 and tokens.shape[0] < 2:
        raise ValueError("boundary='roll' needs a batch of at least 2 examples")
    return _loop(
        params,
        jnp.asarray(tokens),
        jnp.asarray(mode, jnp.int32),
        window=window,
        passes=passes,
        schedule=sched,
        hook=hook,
        stats=stats,
    )


# --- the diagnostics ---------------------------------------------------------------------------


def recall_of_evicted_window(
    params: Params, tokens, window: int, passes: int, *, schedule=None, **schedule_kwargs
) -> dict[str, jax.Array]:
    """How well the fast weights alone store each window they consolidated.

    For every full window w and ssm layer j: k_t, v_t are the key and value that layer
    wrote at window position t in the *last* pass that ran it (pass N; the wake pass for a
    layer outside `loop_blocks`), recomputed from that pass's block input with the block's
    own projections, conv and normalisation (`block_keys_values`). For the fast weights
    S_p after pass p = 1..N (pass 1 is the wake pass; eviction does not touch S, so after
    pass N is also the memory that crosses the boundary) the read-out r_t = S_p^T k_t is
    compared with v_t, per head:
      cosine    = mean over (example, position, head) of <r, v> / (|r| |v|),
      rel_error = mean of |r - v| / |v|.
    The model reads through a per-head RMSNorm, which ignores scale, so the cosine is the
    measure that matters; rel_error also penalises scale (Hebbian rules over-shoot it).

    Returns:
      dict of float32 arrays: "cosine", "rel_error" [W, N, n_ssm] (index p-1 = after pass
      p), "cosine_at_window_start", "rel_error_at_window_start" [W, n_ssm] (S as the window
      opened, before it wrote anything), "change" [W, N-1, n_ssm] (as
      `fast_weight_change_per_pass`, from this path), "fast_norm" [W, N, n_ssm] (mean over
      examples of ||S_p||_F over [H, dk, dv]) and "h_norm" [W, N] (mean |h| of the looped
      blocks' output after pass p: what pass p+1 reads).
    """
    sched = resolve_schedule(schedule, schedule_kwargs)
    check_tokens(tokens, params.config.vocab_size, rank=2)
    _check_full_window(tokens, window)
    _, out, _ = window_loop(params, tokens, window, passes, stats=True, schedule=sched)
    return out


def per_pass_statistics(
    params: Params, tokens, window: int, passes: int, *, schedule=None, **schedule_kwargs
) -> dict[str, list[float]]:
    """Per pass p = 1..N, means over the full windows (and the ssm layers) of
    `recall_of_evicted_window`'s "fast_norm", "h_norm" and "cosine": the numbers that show
    a run diverging (norms growing pass after pass) or collapsing (recall falling).

    Returns:
      {"fast_norm": [N floats], "h_norm": [N], "recall_cosine": [N]}; a model without ssm
      blocks has no fast weights: its "fast_norm" and "recall_cosine" are NaN.
    """
    out = recall_of_evicted_window(params, tokens, window, passes, schedule=schedule,
                                   **schedule_kwargs)  # fmt: skip
    means = {
        "fast_norm": jnp.mean(out["fast_norm"], axis=(0, 2)),
        "h_norm": jnp.mean(out["h_norm"], axis=0),
        "recall_cosine": jnp.mean(out["cosine"], axis=(0, 2)),
    }
    return {k: [float(x) for x in jax.device_get(v)] for k, v in means.items()}


def memory_conditions(
    params: Params,
    batch,
    task_depths: Sequence[int],
    window: int,
    passes: int,
    *,
    metric: str = "acc",
    margin: float = 0.0,
    schedule=None,
    **schedule_kwargs,
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The task metric under four memory conditions, and flags where memory hurts.

    Conditions (all through `window_loop`, the same windows, the same `schedule`):
      no_sleep      passes=1 (the vanilla hybrid);
      trained_N     passes=N;
      no_memory     passes=N, fast weights zeroed at every window boundary;
      wrong_memory  passes=N, fast weights at every boundary replaced by those of example
                    b-1 (`roll_memory`): real consolidated memory, of the wrong example.

    Args:
      batch: a task `Batch` (tokens, targets, loss_mask, depth, group).
      task_depths: the depths to report (`task.depths`).
      metric: "acc" (higher is better) or "loss" (lower is better): what the flags compare.
      margin: trained_N must be worse than no_memory by more than this to be flagged.

    Returns:
      (results, flags): results[condition] is `per_depth_metrics` as Python floats
      ("acc", "loss", "acc/d=..", "loss/d=.."); flags lists one string per depth where
      trained_N scores worse than no_memory, starting with
      "consolidation worse than no memory".
    """
    if metric not in ("acc", "loss"):
        raise ValueError(f"metric must be 'acc' or 'loss', got {metric!r}")
    sched = resolve_schedule(schedule, schedule_kwargs)
    depths = tuple(int(d) for d in task_depths)
    runs = {
        "no_sleep": (1, "none"),
        "trained_N": (passes, "none"),
        "no_memory": (passes, "zero"),
        "wrong_memory": (passes, "roll"),
    }
    results = {}
    for cond, (n, boundary) in runs.items():
        logits, _, _ = window_loop(
            params, batch.tokens, window, n, boundary=boundary, schedule=sched
        )
        m = per_depth_metrics(logits, batch, depths)
        results[cond] = {key: float(val) for key, val in m.items()}
    flags = []
    for d in depths:
        key = f"{metric}/d={d}"
        tr, nm = results["trained_N"][key], results["no_memory"][key]
        if math.isnan(tr) or math.isnan(nm):
            continue
        worse = tr < nm - margin if metric == "acc" else tr > nm + margin
        if worse:
            flags.append(f"{FLAG} at depth {d}: {metric} trained_N={tr:.4f} vs no_memory={nm:.4f}")
    return results, flags


__all__ = [
    "BOUNDARIES",
    "CONDITIONS",
    "FLAG",
    "block_keys_values",
    "fast_weight_change_per_pass",
    "memory_conditions",
    "per_pass_statistics",
    "recall_of_evicted_window",
    "roll_memory",
    "window_loop",
    "zero_memory",
]
