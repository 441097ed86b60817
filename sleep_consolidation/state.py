"""The explicit streaming state: fast weights plus the current window's context.

Only `fast` crosses a window boundary (and, under sliding eviction, the attention prefix);
everything else is context and is evicted: the KV window, the conv buffers and the
features that the next sleep pass reads.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from sleep_consolidation.config import (
    ModelConfig,
    Schedule,
    check_window_and_passes,
    resolve_schedule,
)


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
    schedule = resolve_schedule(schedule, schedule_kwargs)
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


def attention_prefixes(cfg: ModelConfig, state: MemoryState) -> dict:
    """{attn block: (prefix keys, prefix values, prefix valid)}: the sliding prefix each
    attention block of `cfg` reads, in the form `model.window_pass` takes."""
    return {
        b: (state.prefix_keys[j], state.prefix_values[j], state.prefix_valid)
        for j, b in enumerate(cfg.attn_blocks)
    }


def check_state(state, cfg: ModelConfig | None = None, *, caller: str = "state") -> None:
    """Host-side check (shapes only, so it also runs at trace time under jit) that `state` is
    a `MemoryState` whose arrays fit together and, given `cfg`, fit that model config: the
    layer counts, batch, heads, head width, d_model, conv width, window and prefix length,
    and the static `rope_base`.

    Raises:
      ValueError: naming the first mismatched field and the shape it should have (a state
        built by `init_state` for another config, or pieced together by hand).
    """
    if not isinstance(state, MemoryState):
        raise ValueError(
            f"{caller}: state must be a MemoryState (init_state), got {type(state).__name__}"
        )
    hint = "a state built for another config? make it with init_state(params.config, B, L)"

    def fail(msg):
        raise ValueError(f"{caller}: {msg} ({hint})")

    feat = tuple(state.features.shape)
    if len(feat) != 3:
        fail(f"state.features must be [B, L, D], got shape {feat}")
    B, L, D = feat
    pos_shape, pos_dtype = tuple(jnp.shape(state.pos)), jnp.result_type(state.pos)
    if pos_shape != () or not jnp.issubdtype(pos_dtype, jnp.integer):
        fail(f"state.pos must be an integer scalar, got shape {pos_shape} dtype {pos_dtype}")
    n_ssm, n_attn = len(state.fast), len(state.keys)
    if cfg is not None:
        if n_ssm != len(cfg.ssm_blocks):
            fail(f"state.fast has {n_ssm} layer(s) but the model has {len(cfg.ssm_blocks)} ssm")
        if n_attn != len(cfg.attn_blocks):
            fail(f"state.keys has {n_attn} layer(s) but the model has {len(cfg.attn_blocks)} attn")
        if D != cfg.d_model:
            fail(f"state.features has d_model {D} but the model config has {cfg.d_model}")
        if state.rope_base != cfg.rope_base:
            fail(f"state.rope_base={state.rope_base} but the model's rope_base={cfg.rope_base}")
        H, dh, K = cfg.num_heads, cfg.dh, cfg.conv_size
        source = "the model config"
    else:  # no config (evict): the state must agree with itself
        dims = lambda x, n: tuple(jnp.shape(x)) if jnp.ndim(x) == n else (-1,) * n
        if n_ssm:  # [B, H, dh, dh]
            _, H, _, dh = dims(state.fast[0], 4)
        else:  # [B, L, H, dh] (or no layers at all: nothing to compare)
            _, _, H, dh = dims(state.keys[0], 4) if n_attn else (0, 0, 0, 0)
        K = dims(state.conv[0], 3)[1] + 1 if state.conv else 1
        source = "the state's own features and first layer"
    P = L - 1 if state.schedule.eviction == "sliding" else 0
    want = {
        "loop_input": (B, L, D),
        "prefix_valid": (P,),
        **{f"fast[{j}]": (B, H, dh, dh) for j in range(n_ssm)},
        **{f"fast_at_window_start[{j}]": (B, H, dh, dh) for j in range(n_ssm)},
        **{f"conv[{j}]": (B, K - 1, 3 * H * dh) for j in range(n_ssm)},
        **{f"keys[{j}]": (B, L, H, dh) for j in range(n_attn)},
        **{f"values[{j}]": (B, L, H, dh) for j in range(n_attn)},
        **{f"prefix_keys[{j}]": (B, P, H, dh) for j in range(n_attn)},
        **{f"prefix_values[{j}]": (B, P, H, dh) for j in range(n_attn)},
    }
    for name, n in (("fast_at_window_start", n_ssm), ("conv", n_ssm)):
        if len(getattr(state, name)) != n:
            fail(f"state.{name} has {len(getattr(state, name))} layer(s), state.fast has {n}")
    for name in ("values", "prefix_keys", "prefix_values"):
        if len(getattr(state, name)) != n_attn:
            fail(f"state.{name} has {len(getattr(state, name))} layer(s), state.keys has {n_attn}")
    for name, shape in want.items():
        field, _, idx = name.partition("[")
        leaf = getattr(state, field)
        leaf = leaf[int(idx[:-1])] if idx else leaf
        if tuple(jnp.shape(leaf)) != shape:
            fail(
                f"state.{name} has shape {tuple(jnp.shape(leaf))}, expected {shape} from "
                f"{source} (B={B}, L={L}, H={H}, dh={dh}, D={D}, conv_size={K}, P={P})"
            )
