"""The wake section: tokens/s of a Python loop of jitted `wake_step` (docs/design.md's loop)
vs `stream` (one compiled scan) vs batched streams; the rule alone, looped vs scanned; and
stream time vs N when no window fills."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import sleep_consolidation as sc
from experiments.bench import inputs, measure
from sleep_consolidation import rules  # rule_step: one token of a rule for a batch


def run(p: dict, reps: int) -> dict:
    """Whole-model throughput rows, the rule-level comparison and the cost vs N."""
    cfg = sc.ModelConfig(**p["model"])
    params = inputs.init_params(cfg)
    L, T, Tpy = p["wake_window"], p["wake_tokens"], p["python_tokens"]
    rng = np.random.default_rng(0)
    rows = _throughput(p, reps, cfg, params, rng)
    tps = {r["variant"]: r["tokens_per_s"] for r in rows}
    by_n, passes_ratio = _by_passes(p, reps, cfg, params, rng)
    return {
        "config": {**p["model"], "window": L, "stream_tokens": T, "python_tokens": Tpy},
        "rows": rows,
        "stream_vs_python": measure.ratio(tps["stream"], tps["python_loop"]),
        "rule_level": _rule_level(p, reps),
        "by_passes": by_n,
        "passes_ratio": passes_ratio,
    }


def _throughput(p, reps, cfg, params, rng) -> list[dict]:
    """The library's reference loop (one host round trip per token) vs `stream` at B=1 and
    at each of p["stream_batches"]."""
    L, T, Tpy = p["wake_window"], p["wake_tokens"], p["python_tokens"]
    state1 = sc.init_state(cfg, batch_size=1, window=L)
    toks_py = inputs.tokens(rng, 1, Tpy, cfg.vocab_size)
    python_loop = functools.partial(sc.stream, params, state1, toks_py, 1, impl="loop")
    python_loop()  # compiles the steps
    fns = {"python_loop": python_loop}
    tokens_per_call = {"python_loop": Tpy}
    for B in (1, *p["stream_batches"]):
        st = sc.init_state(cfg, batch_size=B, window=L)
        toks = inputs.tokens(rng, B, T, cfg.vocab_size)
        sc.stream(params, st, toks, passes=1)  # compile
        name = "stream" if B == 1 else f"stream_B{B}"
        fns[name] = functools.partial(sc.stream, params, st, toks, passes=1)
        tokens_per_call[name] = B * T
    t = measure.time_interleaved(fns, reps)
    return [
        {
            "variant": name,
            "tokens_per_call": tokens_per_call[name],
            **t[name],
            "tokens_per_s": tokens_per_call[name] / t[name]["median_s"],
            "us_per_token": 1e6 * t[name]["median_s"] / tokens_per_call[name],
        }
        for name in fns
    ]


def _by_passes(p, reps, cfg, params, rng) -> tuple[list[dict], float | None]:
    """Wake cost vs N: a block of L-1 tokens never fills the window, so only wake runs; the
    N-1 sleep passes are compiled into the program but never executed. Returns the rows and
    the time at the last N over that at the first."""
    L = p["wake_window"]
    st = sc.init_state(cfg, batch_size=1, window=L)
    toks = inputs.tokens(rng, 1, L - 1, cfg.vocab_size)
    nfns = {}
    for N in p["wake_passes"]:
        sc.stream(params, st, toks, passes=N)
        nfns[f"N={N}"] = functools.partial(sc.stream, params, st, toks, passes=N)
    tn = measure.time_interleaved(nfns, reps)
    by_n = [{"passes": N, **tn[f"N={N}"]} for N in p["wake_passes"]]
    n_lo, n_hi = p["wake_passes"][0], p["wake_passes"][-1]
    return by_n, measure.ratio(tn[f"N={n_hi}"]["median_s"], tn[f"N={n_lo}"]["median_s"])


def _rule_level(p, reps) -> dict:
    """docs/performance.md's rule-level comparison: the gated delta rule alone (H=4, d=64, B=1),
    a Python loop of a jitted one-token step (each output read before the next token, as a
    streaming consumer would) vs `scan_rule` over the same tokens."""
    H, d, T = 4, 64, p["wake_tokens"]
    rng = np.random.default_rng(3)
    f32 = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    rule = sc.get_rule("gated_delta")
    S0, q, k, v = f32(1, H, d, d), unit(f32(1, T, H, d)), unit(f32(1, T, H, d)), f32(1, T, H, d)
    gate = jnp.full((1, T, H), 0.9, jnp.float32)
    step = jax.jit(functools.partial(rules.rule_step, rule, None))
    scan, _ = measure.compile_fn(lambda *a: sc.scan_rule(rule, None, *a), S0, q, k, v, gate, gate)
    cols = [tuple(x[:, t] for x in (q, k, v, gate, gate)) for t in range(T)]

    def loop():  # a streaming consumer reads each token's output before the next token
        S, outs = S0, []
        for c in cols:
            S, o = step(S, *c)
            outs.append(jax.block_until_ready(o))
        return S, outs

    loop()
    fns = {"python_loop": loop, "scan": lambda: scan(S0, q, k, v, gate, gate)}
    t = measure.time_interleaved(fns, reps)
    return {
        "config": {"H": H, "d": d, "tokens": T},
        "python_loop_us_per_token": 1e6 * t["python_loop"]["median_s"] / T,
        "scan_us_per_token": 1e6 * t["scan"]["median_s"] / T,
        "scan_vs_python": t["python_loop"]["median_s"] / t["scan"]["median_s"],
    }


def markdown(sec: dict) -> list[str]:
    lines = ["", f"## Wake throughput ({measure.cfgline(sec['config'])})", ""]
    lines += measure.table(
        ["variant", "tokens/call", "ms/call", "us/token", "tokens/s"],
        [
            (
                r["variant"],
                r["tokens_per_call"],
                measure.ms_range(r),
                f"{r['us_per_token']:.3g}",
                f"{r['tokens_per_s']:.4g}",
            )
            for r in sec["rows"]
        ],
    )
    rl = sec["rule_level"]
    lines += [
        "",
        f"stream / Python loop: **{sec['stream_vs_python']:.3g}x**. Rule alone "
        f"({measure.cfgline(rl['config'])}): scan {rl['scan_us_per_token']:.3g} us/token vs "
        f"Python loop {rl['python_loop_us_per_token']:.3g} us/token, "
        f"**{rl['scan_vs_python']:.3g}x**. "
        "Stream of L-1 tokens (no window fills) vs N:",
        "",
    ]
    return lines + measure.table(
        ["N", "ms"], [(r["passes"], measure.ms_range(r)) for r in sec["by_passes"]]
    )
