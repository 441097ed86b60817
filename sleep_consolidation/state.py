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
    check_loop,
    resolve_schedule,
)


@flax.struct.dataclass
class MemoryState:
    """Streaming state of a batch of streams that advance together.

    Per-block fields are dicts keyed by block index, as in the training form's
    `sequence.WindowCarry` and `model.window_pass`: {ssm block: ...} for `fast`,
    `fast_at_window_start` and `conv`; {attn block: ...} for `kv` and `prefix`.
    """

    fast: dict  # {ssm block: S [B, H, dh, dh] float32}: the fast weights
    fast_at_window_start: dict  # {ssm block: S when the window opened} (reset option)
    kv: dict  # {attn block: (keys, values)}, each [B, L, H, dh], rotated, of the window
    prefix: dict  # {attn block: (keys [B, P, H, dh], values, valid [P] bool)}; P = L-1
    # under sliding eviction, 0 under hard: the kept KV, as `WindowCarry.prefix`
    conv: dict  # {ssm block: [B, K-1, 3 H dh] short-conv inputs}
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
    check_loop(window, 1)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    schedule.loop_range(cfg)  # validates loop_blocks against the layout
    if schedule.wake_passes > 1:
        raise ValueError(
            f"wake_passes={schedule.wake_passes} (online depth) has a training form only: "
            "use forward (the streaming form would keep one fast-weight state per run)"
        )
    B, L, H, dh, D = batch_size, window, cfg.num_heads, cfg.dh, cfg.d_model
    P = L - 1 if schedule.eviction == "sliding" else 0
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    fast = {b: zeros(B, H, dh, dh) for b in cfg.ssm_blocks}
    empty = zeros(B, P, H, dh)
    return MemoryState(
        fast=fast,
        fast_at_window_start=fast,
        kv={b: (zeros(B, L, H, dh), zeros(B, L, H, dh)) for b in cfg.attn_blocks},
        prefix={b: (empty, empty, jnp.zeros((P,), bool)) for b in cfg.attn_blocks},
        conv={b: zeros(B, cfg.conv_size - 1, 3 * H * dh) for b in cfg.ssm_blocks},
        features=zeros(B, L, D),
        loop_input=zeros(B, L, D),
        pos=jnp.zeros((), jnp.int32),
        schedule=schedule,
        rope_base=cfg.rope_base,
    )


def check_state(state, cfg: ModelConfig | None = None, *, caller: str = "state") -> None:
    """Host-side check (shapes only, so it also runs at trace time under jit) that `state` is
    a `MemoryState` whose arrays fit together and, given `cfg`, fit that model config: the
    blocks, batch, heads, head width, d_model, conv width, window and prefix length, and
    the static `rope_base`.

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
    fields = ("fast", "fast_at_window_start", "conv", "kv", "prefix")
    for name in fields:
        if not isinstance(getattr(state, name), dict):
            fail(f"state.{name} must be a dict keyed by block index")
    ssm, attn = sorted(state.fast), sorted(state.kv)
    if cfg is not None:
        if ssm != list(cfg.ssm_blocks):
            fail(f"state.fast has blocks {ssm} but the model's ssm blocks are {cfg.ssm_blocks}")
        if attn != list(cfg.attn_blocks):
            fail(f"state.kv has blocks {attn} but the model's attn blocks are {cfg.attn_blocks}")
        if D != cfg.d_model:
            fail(f"state.features has d_model {D} but the model config has {cfg.d_model}")
        if state.rope_base != cfg.rope_base:
            fail(f"state.rope_base={state.rope_base} but the model's rope_base={cfg.rope_base}")
        H, dh, K = cfg.num_heads, cfg.dh, cfg.conv_size
        source = "the model config"
    else:  # no config (evict): the state must agree with itself
        dims = lambda x, n: tuple(jnp.shape(x)) if jnp.ndim(x) == n else (-1,) * n
        if ssm:  # [B, H, dh, dh]
            _, H, _, dh = dims(state.fast[ssm[0]], 4)
        else:  # [B, L, H, dh] (or no layers at all: nothing to compare)
            _, _, H, dh = dims(state.kv[attn[0]][0], 4) if attn else (0, 0, 0, 0)
        K = dims(state.conv[ssm[0]], 3)[1] + 1 if ssm and ssm[0] in state.conv else 1
        source = "the state's own features and first block"
    for name, blocks, of in (("fast_at_window_start", ssm, "fast"), ("conv", ssm, "fast"),
                             ("prefix", attn, "kv")):  # fmt: skip
        if sorted(getattr(state, name)) != blocks:
            fail(f"state.{name} has blocks {sorted(getattr(state, name))}, state.{of} has {blocks}")
    P = L - 1 if state.schedule.eviction == "sliding" else 0
    want = {"loop_input": ((B, L, D), state.loop_input)}
    for b in ssm:
        want[f"fast[{b}]"] = ((B, H, dh, dh), state.fast[b])
        want[f"fast_at_window_start[{b}]"] = ((B, H, dh, dh), state.fast_at_window_start[b])
        want[f"conv[{b}]"] = ((B, K - 1, 3 * H * dh), state.conv[b])
    for b in attn:
        if len(state.kv[b]) != 2 or len(state.prefix[b]) != 3:
            fail(f"state.kv[{b}] must be (keys, values), state.prefix[{b}] (keys, values, valid)")
        want[f"kv[{b}][0]"] = ((B, L, H, dh), state.kv[b][0])
        want[f"kv[{b}][1]"] = ((B, L, H, dh), state.kv[b][1])
        want[f"prefix[{b}][0]"] = ((B, P, H, dh), state.prefix[b][0])
        want[f"prefix[{b}][1]"] = ((B, P, H, dh), state.prefix[b][1])
        want[f"prefix[{b}][2]"] = ((P,), state.prefix[b][2])
    for name, (shape, leaf) in want.items():
        if tuple(jnp.shape(leaf)) != shape:
            fail(
                f"state.{name} has shape {tuple(jnp.shape(leaf))}, expected {shape} from "
                f"{source} (B={B}, L={L}, H={H}, dh={dh}, D={D}, conv_size={K}, P={P})"
            )
