"""Causal softmax attention restricted to the current window (plus, under sliding eviction,
a prefix of the previous window's most recent L-1 keys/values).

Keys are cached *after* RoPE at their position within the window; a prefix key kept across
a boundary is re-rotated by -L (RoPE rotations compose), so all positions stay relative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sleep_consolidation.config import ModelConfig
from sleep_consolidation.layers.linear import matmul_in, project

_NEG = -1e30  # finite "minus infinity": masked rows never become all -inf (each query sees itself)


def rope(x, positions, base: float):
    """Rotary embedding. x: [B, T, H, dh]; positions: [T] (any sign)."""
    half = x.shape[-1] // 2
    if half == 0:
        return x
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    ang = positions.astype(jnp.float32)[:, None] * freq  # [T, half]
    cos, sin = jnp.cos(ang)[:, None, :], jnp.sin(ang)[:, None, :]
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], axis=-1)


def init_attention(key, cfg: ModelConfig) -> dict:
    kq, kk, kv, ko = jax.random.split(key, 4)
    d, hd = cfg.d_model, cfg.num_heads * cfg.dh
    normal = jax.nn.initializers.normal
    return {
        "wq": normal(d**-0.5)(kq, (d, hd)),
        "wk": normal(d**-0.5)(kk, (d, hd)),
        "wv": normal(d**-0.5)(kv, (d, hd)),
        "wo": normal(hd**-0.5)(ko, (hd, d)),
    }


def _qkv(p, cfg: ModelConfig, x, positions):
    """Projects x [B, T, D] to rotated q, k and plain v, each [B, T, H, dh]."""
    B, T, _ = x.shape
    # One matmul for q|k|v (x read once; one dx and one weight-gradient matmul backward).
    qkv = project(x, jnp.concatenate([p["wq"], p["wk"], p["wv"]], axis=1), cfg.compute_dtype)
    q, k, v = (y.reshape(B, T, cfg.num_heads, cfg.dh) for y in jnp.split(qkv, 3, axis=-1))
    return rope(q, positions, cfg.rope_base), rope(k, positions, cfg.rope_base), v


def _attend(p, q, k, v, mask, dtype=None):
    """q [B,Tq,H,dh], k/v [B,Tk,H,dh], mask [Tq,Tk] -> [B, Tq, D]; the products in `dtype`
    (the model's compute_dtype), the softmax in float32."""
    B, Tq, H, dh = q.shape
    heads = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, H, dh] <-> [B, H, T, dh]
    # `matmul`: batched products whose backward is in XLA:CPU's fast form (linear.py).
    scores = matmul_in(heads(q), heads(k), dtype, transpose_b=True) * dh**-0.5  # [B,H,Tq,Tk]
    scores = jnp.where(mask[None, None], scores, _NEG)
    out = heads(matmul_in(jax.nn.softmax(scores, axis=-1), heads(v), dtype))
    return project(out.reshape(B, Tq, H * dh), p["wo"], dtype)


def _prefix_mask(query_pos, prefix_valid):
    """Prefix slot s holds relative position s - P (P = prefix length = L - 1); a query at
    window position i may see it when it lies within the last L positions: s >= i."""
    slots = jnp.arange(prefix_valid.shape[0])
    return prefix_valid[None, :] & (slots[None, :] >= query_pos[:, None])


def attention_window(p, cfg: ModelConfig, x, prefix_k, prefix_v, prefix_valid):
    """One pass over a window.

    Args:
      x: [B, T, D] normed inputs at window positions 0..T-1.
      prefix_k, prefix_v: [B, P, H, dh] kept keys/values (P = 0 under hard eviction).
      prefix_valid: [P] bool.

    Returns:
      (y [B, T, D], k [B, T, H, dh] rotated, v [B, T, H, dh]) for the window.
    """
    T = x.shape[1]
    pos = jnp.arange(T)
    q, k, v = _qkv(p, cfg, x, pos)
    mask = pos[None, :] <= pos[:, None]
    if prefix_k.shape[1]:
        mask = jnp.concatenate([_prefix_mask(pos, prefix_valid), mask], axis=1)
        keys, values = jnp.concatenate([prefix_k, k], 1), jnp.concatenate([prefix_v, v], 1)
        y = _attend(p, q, keys, values, mask, cfg.compute_dtype)
    else:
        y = _attend(p, q, k, v, mask, cfg.compute_dtype)
    return y, k, v


def attention_step(p, cfg: ModelConfig, x, pos, k_cache, v_cache, prefix_k, prefix_v, prefix_valid):
    """One token at window position `pos` (scalar); writes its k/v into the cache.

    Args:
      x: [B, D] normed input; k_cache/v_cache: [B, L, H, dh].

    Returns:
      (y [B, D], k_cache, v_cache).
    """
    q, k, v = _qkv(p, cfg, x[:, None], pos[None])
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k, pos, axis=1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v, pos, axis=1)
    mask = (jnp.arange(k_cache.shape[1]) <= pos)[None, :]
    keys, values = k_cache, v_cache
    if prefix_k.shape[1]:
        mask = jnp.concatenate([_prefix_mask(pos[None], prefix_valid), mask], axis=1)
        keys = jnp.concatenate([prefix_k, k_cache], 1)
        values = jnp.concatenate([prefix_v, v_cache], 1)
    return _attend(p, q, keys, values, mask, cfg.compute_dtype)[:, 0], k_cache, v_cache


def slide_prefix(prefix_k, prefix_v, prefix_valid, k, v, filled, base: float):
    """Sliding eviction: the new prefix is the last P = L-1 positions before `filled`, taken
    from [old prefix, window], re-rotated so that position `filled` becomes 0.

    Args:
      prefix_*: [B, P, H, dh] / [P]; k, v: [B, L, H, dh] window keys/values; filled: scalar.
    """
    P = prefix_k.shape[1]
    L = k.shape[1]
    all_k = jnp.concatenate([prefix_k, k], 1)
    all_v = jnp.concatenate([prefix_v, v], 1)
    all_valid = jnp.concatenate([prefix_valid, jnp.arange(L) < filled])
    # combined index c holds relative position c - P; we want positions filled-P .. filled-1.
    new_k = jax.lax.dynamic_slice_in_dim(all_k, filled, P, axis=1)
    new_v = jax.lax.dynamic_slice_in_dim(all_v, filled, P, axis=1)
    new_valid = jax.lax.dynamic_slice_in_dim(all_valid, filled, P)
    shift = jnp.full((P,), -filled)
    return rope(new_k, shift, base), new_v, new_valid
