"""The hybrid stack: parameters, blocks (pre-norm mixer + residual + MLP) and passes.

`Params` is a pytree of slow weights that carries its `ModelConfig` as static metadata,
so `jax.jit`, `jax.grad` and optax act on it directly and step functions need no separate
config argument. Two evaluation forms share every block:
  * `window_pass`: a block range over a whole window at once (training form, sleep);
  * `block_step`: one block for one token (wake form), with explicit caches.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from sleep_consolidation.config import ModelConfig
from sleep_consolidation.layers import attention, fast_weights
from sleep_consolidation.layers.linear import linear, project
from sleep_consolidation.layers.norms import rms_norm


@flax.struct.dataclass
class Params:
    """Slow weights. `blocks[i]` is the dict of block i (its mixer depends on layout[i])."""

    embed: jax.Array  # [V, D]
    blocks: tuple[dict[str, Any], ...]
    final_norm: jax.Array  # [D]
    unembed: jax.Array  # [D, V]
    config: ModelConfig = flax.struct.field(pytree_node=False)


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
    """Initialises the slow weights of `cfg` (float32)."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    k_embed, k_out, k_blocks = jax.random.split(key, 3)
    d, f = cfg.d_model, cfg.d_model * cfg.mlp_ratio
    normal = jax.nn.initializers.normal
    # Residual-branch outputs are scaled down with depth so the stream stays O(1) at init.
    out_scale = (2 * len(cfg.layout)) ** -0.5
    blocks = []
    for i, kind in enumerate(cfg.layout):
        k_mix, k1, k2 = jax.random.split(jax.random.fold_in(k_blocks, i), 3)
        if kind == "attn":
            mixer = attention.init_attention(k_mix, cfg)
        else:
            mixer = fast_weights.init_fast_weight_mixer(k_mix, cfg)
        mixer["wo"] = mixer["wo"] * out_scale
        blocks.append(
            {
                "norm1": jnp.ones((d,)),
                "mixer": mixer,
                "norm2": jnp.ones((d,)),
                "w1": normal(d**-0.5)(k1, (d, f)),
                "w2": normal(f**-0.5 * out_scale)(k2, (f, d)),
            }
        )
    return Params(
        embed=normal(1.0)(k_embed, (cfg.vocab_size, d)),
        blocks=tuple(blocks),
        final_norm=jnp.ones((d,)),
        unembed=normal(d**-0.5)(k_out, (d, cfg.vocab_size)),
        config=cfg,
    )


def sleep_input(schedule, h, loop_input):
    """What a sleep pass reads: the previous pass's output h [B, L, D], plus the looped
    range's wake input with `reinject_embedding`, at unit RMS with `normalize_sleep_input`
    (`config.Schedule`). The one definition the training form, `sleep_step` and adaptive
    sleep share."""
    x = h + loop_input if schedule.reinject_embedding else h
    return rms_norm(x, 1.0) if schedule.normalize_sleep_input else x


def embed(params: Params, tokens):
    """Token embeddings; out-of-range ids on either side (< 0 or >= V) give NaN (visible)
    rather than a silent clamp or a wrap-around to a real row (host-side callers refuse them
    before compiling; inside jit the NaN reaches the logits)."""
    V = params.embed.shape[0]
    # The range is tested in the ids' own width: `take` narrows wide ids (int64 under
    # jax_enable_x64, uint32) to int32 first, so 2**32 + 3 would read row 3.
    valid = (tokens >= 0) & (tokens < V)
    rows = jnp.take(params.embed, jnp.where(valid, tokens, 0).astype(jnp.int32), axis=0)
    return jnp.where(valid[..., None], rows, jnp.nan)


def logits(params: Params, h):
    # float32 whatever the compute_dtype: the loss reads these.
    return linear(rms_norm(h, params.final_norm), params.unembed)


def _mlp(block, h, dtype=None):
    x = rms_norm(h, block["norm2"])
    return h + project(jax.nn.gelu(project(x, block["w1"], dtype)), block["w2"], dtype)


def take_positions(h, positions):
    """h[:, positions] as slices of contiguous runs (a gather's gradient is a scatter, which
    is slow on CPU; the answer positions of the tasks are a few runs)."""
    runs, start = [], 0
    for i in range(1, len(positions) + 1):
        if i == len(positions) or positions[i] != positions[i - 1] + 1:
            runs.append(h[:, positions[start] : positions[i - 1] + 1])
            start = i
    return runs[0] if len(runs) == 1 else jnp.concatenate(runs, axis=1)


def window_pass(
    params: Params, blocks: range, h, fast: dict, prefix: dict, valid=None, out_positions=None
):
    """Runs the blocks in `blocks` once over a window.

    Args:
      h: [B, T, D] inputs at window positions 0..T-1.
      fast: {block index: S [B, H, dh, dh]} for the ssm blocks (others ignored).
      prefix: {block index: (k, v, valid)} kept attention prefix per attn block.
      valid: optional bool [T]; positions past the filled part do not write fast weights.
      out_positions: optional static tuple of window positions: the last block's mixer
        still reads and writes the whole window (its fast weights and KV are exact), but
        its residual and MLP run at these positions only, and h_out holds only them. For
        a caller that reads nothing else of h_out (logits at answer positions).

    Returns:
      (h_out [B, T, D] (or [B, len(out_positions), D]), fast (updated copy), kv {attn
      block index: (k, v)} of this pass).
    """
    cfg = params.config
    fast = dict(fast)
    kv = {}
    for i in blocks:
        block = params.blocks[i]
        x = rms_norm(h, block["norm1"])
        if cfg.layout[i] == "attn":
            pk, pv, pvalid = prefix[i]
            y, k, v = attention.attention_window(block["mixer"], cfg, x, pk, pv, pvalid)
            kv[i] = (k, v)
        else:
            y, fast[i] = fast_weights.fast_weight_window(block["mixer"], cfg, x, fast[i], valid)
        if out_positions is not None and i == blocks[-1]:
            h, y = take_positions(h, out_positions), take_positions(y, out_positions)
        h = _mlp(block, h + y, cfg.compute_dtype)
    return h, fast, kv


def block_step(params: Params, i: int, h, pos, fast, kv_cache, prefix, conv):
    """Block `i` for one token.

    Returns:
      (h, fast_i, kv_cache_i, conv_i); the ones block `i` does not use pass through.
    """
    cfg = params.config
    block = params.blocks[i]
    x = rms_norm(h, block["norm1"])
    if cfg.layout[i] == "attn":
        pk, pv, pvalid = prefix
        y, k_cache, v_cache = attention.attention_step(
            block["mixer"], cfg, x, pos, kv_cache[0], kv_cache[1], pk, pv, pvalid
        )
        kv_cache = (k_cache, v_cache)
    else:
        y, fast, conv = fast_weights.fast_weight_step(block["mixer"], cfg, x, fast, conv)
    return _mlp(block, h + y, cfg.compute_dtype), fast, kv_cache, conv
