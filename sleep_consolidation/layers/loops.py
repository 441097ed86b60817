"""`scan`: `jax.lax.scan`, or the same loop unrolled in Python when it is short.

Why: on XLA:CPU every `while` loop costs a fixed overhead per iteration, keeps its body
from fusing with the code around it, and makes reverse-mode AD stack every residual into
[length, ...] buffers with dynamic-update-slices. The loops of a research-scale step are
short (1-2 chunks per window, 1-4 windows, N-1 <= 3 sleep passes), and unrolling them cut
the train step of recall:capacity by a third (BUILD_NOTES.md, "Research-scale
throughput"). Long loops stay
`lax.scan`, so compile time and program size stay bounded.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

# Loops of at most this many iterations are unrolled (tested against lax.scan). Nested
# loops multiply (sleep passes x chunks), so this stays small: at 8, the benchmark's train
# section (d=256, L=256, N up to 8: 8 chunks x 7 passes unrolled) took 791 s, mostly compiling.
MAX_UNROLL = 4


@contextlib.contextmanager
def unroll_limit(limit: int):
    """Within the block, `scan` unrolls loops of at most `limit` iterations (0: every loop
    a `lax.scan`, the reference form), and restores the default after. It acts when a
    function is traced: a compiled program keeps the limit it was traced under.
    """
    global MAX_UNROLL
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be an int >= 0, got {limit!r}")
    saved, MAX_UNROLL = MAX_UNROLL, limit
    try:
        yield
    finally:
        MAX_UNROLL = saved


def scan(f, init, xs=None, length: int | None = None, max_unroll: int | None = None):
    """Same contract as `jax.lax.scan(f, init, xs, length)` (stacked outputs; `None`
    outputs stay None); unrolled in Python when the trip count is <= `max_unroll`
    (default `MAX_UNROLL`)."""
    limit = MAX_UNROLL if max_unroll is None else max_unroll
    leaves = jax.tree_util.tree_leaves(xs)
    n = length if length is not None else (leaves[0].shape[0] if leaves else None)
    if n is None:
        raise ValueError("scan needs xs with a leading axis or an explicit length")
    if n > limit or n == 0:
        return jax.lax.scan(f, init, xs, length=length)
    carry, ys = init, []
    for i in range(n):
        x = None if xs is None else jax.tree_util.tree_map(lambda a, i=i: a[i], xs)
        carry, y = f(carry, x)
        ys.append(y)
    stacked = jax.tree_util.tree_map(lambda *y: jnp.stack(y), *ys) if ys[0] is not None else None
    return carry, stacked
