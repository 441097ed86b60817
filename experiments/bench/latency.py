"""The latency section: per-token wake latency at stream position ~L vs ~16L, the hybrid
(window L, evicting) vs a full-attention model that keeps its whole cache (attention-only,
cache = everything read so far)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import sleep_consolidation as sc
from experiments.bench import inputs, measure

_wake = jax.jit(sc.wake_step)  # one jitted instance, so its compilations are reused


def run(p: dict, reps: int) -> dict:
    """Two measures at each position: `stream_us_per_token`, a compiled `stream` of L-1
    tokens from that position divided by L-1 (the compute per token; no window fills inside
    the block), and `step_call_us`, one call of a jitted `wake_step` (includes host
    dispatch)."""
    base = dict(p["model"])
    layout = tuple(base.pop("layout", ("attn", "ssm", "attn", "ssm")))
    hybrid = sc.ModelConfig(layout=layout, **base)
    full = sc.ModelConfig(layout=("attn",) * len(layout), **base)
    L = p["latency_window"]
    K = L - 1  # tokens per timed block
    positions = (L, 16 * L)
    rng = np.random.default_rng(1)
    blocks, steps = {}, {}

    def add(name, params, st):
        toks = inputs.tokens(rng, 1, K, params.config.vocab_size)
        sc.stream(params, st, toks)  # compile
        blocks[name] = functools.partial(sc.stream, params, st, toks)
        _wake(params, st, toks[:, 0])
        steps[name] = functools.partial(_wake, params, st, toks[:, 0])

    params_h = inputs.init_params(hybrid)
    for pos in positions:
        add(f"hybrid@{pos}", params_h, _hybrid_at(params_h, pos, L, rng))
    params_f = inputs.init_params(full)
    for pos in positions:
        add(f"full_attention@{pos}", params_f, _full_at(full, pos, K, rng))
    tb = measure.time_interleaved(blocks, reps=max(3 * reps, 20))
    ts = measure.time_interleaved(steps, reps=max(5 * reps, 50))
    rows = [
        {
            "variant": k,
            "stream_us_per_token": 1e6 * tb[k]["median_s"] / K,
            "stream_min_us": 1e6 * tb[k]["min_s"] / K,
            "stream_max_us": 1e6 * tb[k]["max_s"] / K,
            "step_call_us": 1e6 * ts[k]["median_s"],
            "step_call_min_us": 1e6 * ts[k]["min_s"],
        }
        for k in blocks
    ]
    ratio = lambda m, t: measure.ratio(
        t[f"{m}@{positions[1]}"]["median_s"], t[f"{m}@{positions[0]}"]["median_s"]
    )
    return {
        "config": {**p["model"], "window": L, "positions": positions, "block_tokens": K},
        "rows": rows,
        "hybrid_ratio": ratio("hybrid", tb),
        "full_attention_ratio": ratio("full_attention", tb),
        "hybrid_step_call_ratio": ratio("hybrid", ts),
        "full_attention_step_call_ratio": ratio("full_attention", ts),
    }


def _hybrid_at(params, pos, L, rng) -> sc.MemoryState:
    """The hybrid's state at stream position `pos`, reached for real (15 evictions on the way
    to 16L), a window at a time (one compiled block shape)."""
    cfg = params.config
    st = sc.init_state(cfg, batch_size=1, window=L)
    for _ in range(pos // L):
        st, _ = sc.stream(params, st, inputs.tokens(rng, 1, L, cfg.vocab_size))
    return st


def _full_at(cfg, pos, K, rng) -> sc.MemoryState:
    """Full attention at position `pos`: a cache of pos + K slots holding pos tokens (the
    cache contents do not change the cost; random keys/values stand in for them)."""
    st = sc.init_state(cfg, batch_size=1, window=pos + K)
    kv = lambda shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return st.replace(
        kv={b: (kv(k.shape), kv(v.shape)) for b, (k, v) in st.kv.items()},
        pos=jnp.asarray(pos, jnp.int32),
    )


def markdown(sec: dict) -> list[str]:
    lines = [
        "",
        f"## Per-token wake latency vs stream position ({measure.cfgline(sec['config'])})",
        "",
    ]
    lines += measure.table(
        ["model@position", "us/token in a compiled stream (min-max)", "jitted step call us"],
        [
            (
                r["variant"],
                f"{r['stream_us_per_token']:.4g} ({r['stream_min_us']:.4g}-"
                f"{r['stream_max_us']:.4g})",
                f"{r['step_call_us']:.4g}",
            )
            for r in sec["rows"]
        ],
    )
    return lines + [
        "",
        f"16L / L, per token in a stream: hybrid **{sec['hybrid_ratio']:.3g}x**, full "
        f"attention **{sec['full_attention_ratio']:.3g}x** (single jitted calls, dispatch "
        f"included: {sec['hybrid_step_call_ratio']:.3g}x and "
        f"{sec['full_attention_step_call_ratio']:.3g}x).",
    ]
