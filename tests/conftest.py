"""Shared fixtures: tiny models and a reference streaming loop (design.md's snippet)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import sleep_consolidation as sc

# Compile each streaming step once per (config, schedule, shapes) across the whole session.
wake_jit = jax.jit(sc.wake_step)
sleep_jit = jax.jit(sc.sleep_step)
evict_jit = jax.jit(sc.evict)


def tiny_config(rule="gated_delta", layout=("attn", "ssm", "attn", "ssm"), **kw):
    kw.setdefault("vocab_size", 11)
    kw.setdefault("d_model", 16)
    kw.setdefault("num_heads", 2)
    return sc.ModelConfig(layout=layout, rule=rule, **kw)


def stream_loop(
    params, tokens, window, passes, state=None, zero_fast_at_boundary=False, **schedule
):
    """The Python-driven streaming loop of design.md; returns (logits [B, T, V], state)."""
    B, T = tokens.shape
    if state is None:
        state = sc.init_state(params.config, batch_size=B, window=window, **schedule)
    outs = []
    for t in range(T):
        state, logits_t = wake_jit(params, state, tokens[:, t])
        outs.append(logits_t)
        if sc.window_full(state):
            for _ in range(passes - 1):
                state = sleep_jit(params, state)
            state = evict_jit(state)
            if zero_fast_at_boundary:
                state = state.replace(fast=jax.tree_util.tree_map(jnp.zeros_like, state.fast))
    return jnp.stack(outs, axis=1), state


@pytest.fixture
def tokens():
    return jax.random.randint(jax.random.key(1), (2, 11), 0, 11)
