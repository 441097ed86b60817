"""The explicit streaming state: fast weights plus the current window's context.

Only `fast` crosses a window boundary (and, under sliding eviction, the attention prefix);
everything else is context and is evicted: the KV window, the conv buffers and the
features that the next sleep pass reads.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from sleep_consolidation.config import ModelConfig, Schedule, check_window_and_passes


@flax.struct.dataclass
class MemoryState:
    """Streaming state of a batch of streams that advance together.

    Tuples are ordered like `cfg.ssm_blocks` (fast, fast_at_window_start, conv) or
    `cfg.attn_blocks` (keys, values, prefix_keys, prefix_values).
    """

    fast: tuple[jax.Array, ...]  # [B, H, dh, dh] float32 per ssm block: the fast weights S
    fast_at_window_start: tuple[jax.Array, ...]  # S when the window opened (reset option)
    keys: tuple[jax.Array, ...]  # [B, L, H, dh] rotated keys of the window, per attn block
    values: tuple[jax.Array, ...]  # [B, L, H, dh]
    prefix_keys: tuple[jax.Array, ...]  # [B, P, H, dh]; P = L-1 (sliding) or 0 (hard)
    prefix_values: tuple[jax.Array, ...]
    prefix_valid: jax.Array  # [P] bool
    conv: tuple[jax.Array, ...]  # [B, K-1, 3 H dh] short-conv inputs, per ssm block
    features: jax.Array  # [B, L, D] output of the looped blocks at each window position
    loop_input: jax.Array  # [B, L, D] input of the looped blocks at wake (for re-injection)
    pos: jax.Array  # int32 scalar: filled positions of the current window
    schedule: Schedule = flax.struct.field(pytree_node=False)
    rope_base: float = flax.struct.field(pytree_node=False, default=10000.0)  # for sliding

    @property
    def window(self) -> int:
        return self.features.shape[1]


def init_state(
    cfg: ModelConfig,
    batch_size: int,
    window: int,
    *,
    schedule: Schedule | None = None,
    **schedule_kwargs,
) -> MemoryState:
    """Empty state: zero fast weights, empty window.

    Args:
      cfg: the model config (`params.config`).
      batch_size: number of streams.
      window: L, the KV window length (the window sleeps when L tokens are held).
      schedule: a `Schedule`, or pass its fields as keyword arguments (eviction=...,
        reset_between_passes=..., reinject_embedding=..., loop_blocks=...).
    """
    if schedule is None:
        schedule = Schedule(**schedule_kwargs)
    elif schedule_kwargs:
        raise ValueError("pass either schedule= or its fields as keywords, not both")
    check_window_and_passes(window, 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    schedule.loop_range(cfg)  # validates loop_blocks against the layout
    B, L, H, dh, D = batch_size, window, cfg.num_heads, cfg.dh, cfg.d_model
    P = L - 1 if schedule.eviction == "sliding" else 0
    n_ssm, n_attn = len(cfg.ssm_blocks), len(cfg.attn_blocks)
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    fast = tuple(zeros(B, H, dh, dh) for _ in range(n_ssm))
    return MemoryState(
        fast=fast,
        fast_at_window_start=fast,
        keys=tuple(zeros(B, L, H, dh) for _ in range(n_attn)),
        values=tuple(zeros(B, L, H, dh) for _ in range(n_attn)),
        prefix_keys=tuple(zeros(B, P, H, dh) for _ in range(n_attn)),
        prefix_values=tuple(zeros(B, P, H, dh) for _ in range(n_attn)),
        prefix_valid=jnp.zeros((P,), bool),
        conv=tuple(zeros(B, cfg.conv_size - 1, 3 * H * dh) for _ in range(n_ssm)),
        features=zeros(B, L, D),
        loop_input=zeros(B, L, D),
        pos=jnp.zeros((), jnp.int32),
        schedule=schedule,
        rope_base=cfg.rope_base,
    )
