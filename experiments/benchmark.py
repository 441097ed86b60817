"""Performance benchmark: wake, sleep and training costs side by side, against the targets of
docs/performance.md.

    python -m experiments.benchmark                 # full (~10-15 min on a 2-core CPU)
    python -m experiments.benchmark --quick         # < 2 min
    python -m experiments.benchmark --out=/tmp/r.json --md=/tmp/r.md

Writes a JSON record (`--out`, default benchmarks/results.json) and a markdown table (`--md`,
default: the JSON path with a .md suffix). Sections:

  ceiling  f32 matmul GFLOP/s (n = 1024..2048): the roof every fraction is reported against.
  wake     tokens/s: a Python loop of jitted `wake_step` (docs/design.md's loop) vs `stream` (one
           compiled scan) vs batched streams; stream time vs N when no window fills.
  latency  per-token wake latency at stream position ~L vs ~16L, hybrid vs a full-attention
           model that keeps its whole cache (attention-only, cache = everything read so far).
  sleep    one pass of the fast-weight rule over a window: per-token scan vs chunked form
           over chunk sizes, with GFLOP/s from formulas and the agreement of the two.
  train    value_and_grad of a masked cross-entropy of `forward` vs N: step time, forward
           time, peak temporary memory (XLA's memory_analysis), plain vs rematerialised.
  research the CLI's train step for the CPU-scale configs (recall:capacity, rule110:cpu,
           depo:cpu) vs the reference step: tokens/s, model FLOP/s, share of the matmul
           ceiling and a profile breakdown (bench_research.py). Run it on one core:
           taskset -c 0 python -m experiments.benchmark --sections=ceiling,research

Timing: every program is compiled first (`jit(...).lower(...).compile()`), warmed up, then
the variants of one comparison are run interleaved, `jax.block_until_ready` on the whole
output; we report median, min and max. Ratios are taken between medians of one process.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import sleep_consolidation as sc
from experiments import bench_research
from sleep_consolidation import rules, streaming

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "benchmarks/results.json", "Where to write the JSON results.")
flags.DEFINE_string("md", None, "Where to write the markdown table (default: --out with .md).")
flags.DEFINE_enum("mode", "full", ["full", "quick", "smoke"], "Problem sizes and repetitions.")
flags.DEFINE_bool("quick", False, "Shorthand for --mode=quick (< 2 minutes on a 2-core CPU).")
flags.DEFINE_list("sections", "ceiling,wake,latency,sleep,train,research", "Sections to run.")
flags.DEFINE_integer("reps", None, "Timed repetitions per variant (default: from the mode).")

SECTIONS = ("ceiling", "wake", "latency", "sleep", "train", "research")

# One jitted instance of each step, shared by all sections (so compilations are reused).
_wake = jax.jit(sc.wake_step)

# Sizes per mode. `full` follows docs/performance.md; `quick` is the same shape of experiment at
# smaller sizes; `smoke` only checks that everything runs (the test suite uses it).
PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(
        reps=10,
        ceiling_n=(1024, 1536, 2048),
        model=dict(vocab_size=256, d_model=64, num_heads=4),
        wake_window=64,
        wake_tokens=1024,
        python_tokens=256,
        stream_batches=(8, 32),
        wake_passes=(1, 2, 8),
        latency_window=64,
        sleep_L=(256, 1024, 4096),
        sleep_d=(64, 128),
        sleep_C=(16, 32, 64),
        sleep_heads=4,
        sleep_batch=1,
        train_model=dict(vocab_size=256, d_model=256, num_heads=4),
        train_window=256,
        train_windows=2,
        train_N=(1, 2, 4, 8),
        train_chunk=32,
        train_rule_L=1024,
        train_rule_N=(1, 2, 4, 8),
        research=(("recall:capacity", (1, 2, 4)), ("rule110:cpu", (1, 4)), ("depo:cpu", (1, 4))),
    ),
    "quick": dict(
        reps=5,
        ceiling_n=(1024,),
        model=dict(vocab_size=256, d_model=64, num_heads=4),
        wake_window=32,
        wake_tokens=256,
        python_tokens=64,
        stream_batches=(8,),
        wake_passes=(1, 8),
        latency_window=32,
        sleep_L=(256, 1024),
        sleep_d=(64,),
        sleep_C=(16, 32),
        sleep_heads=4,
        sleep_batch=1,
        train_model=dict(vocab_size=64, d_model=64, num_heads=1, layout=("attn", "ssm")),
        train_window=64,
        train_windows=2,
        train_N=(1, 2, 4),
        train_chunk=32,
        train_variants=("scan_plain", "chunked_remat_pass"),
        train_rule_L=512,
        train_rule_N=(1, 4),
        train_rule_variants=("scan_plain", "chunked_remat_pass"),
        research=(("recall:capacity", (1, 4)),),
    ),
    "smoke": dict(
        reps=2,
        ceiling_n=(128,),
        model=dict(vocab_size=16, d_model=16, num_heads=2, layout=("attn", "ssm")),
        wake_window=4,
        wake_tokens=8,
        python_tokens=6,
        stream_batches=(),
        wake_passes=(1,),
        latency_window=4,
        sleep_L=(32,),
        sleep_d=(8,),
        sleep_C=(8,),
        sleep_heads=2,
        sleep_batch=1,
        train_model=dict(vocab_size=16, d_model=16, num_heads=2, layout=("attn", "ssm")),
        train_window=8,
        train_windows=2,
        train_N=(1,),
        train_chunk=4,
        train_variants=("chunked_remat_pass",),
        train_rule_L=64,
        train_rule_N=(2,),
        train_rule_variants=("scan_plain", "chunked_remat_pass"),
        research=(("recall:tiny", (1,)),),
    ),
}


# --- timing ----------------------------------------------------------------------------------


def compile_fn(fn: Callable, *args, **jit_kwargs):
    """AOT-compiles `fn` for `args`; returns (compiled, seconds to compile)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def time_interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1):
    """Times zero-argument callables, interleaved (each round runs every variant once, in a
    shuffled order); each call is blocked on.

    Returns {name: {"median_s", "min_s", "max_s", "reps"}}.
    """
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    order = np.random.default_rng(0)
    for _ in range(reps):
        # A fresh order each round, so no variant always runs right after the same other one
        # (e.g. after one that flushed the caches).
        for name in order.permutation(names):
            fn = fns[name]
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "reps": len(ts),
        }
        for name, ts in times.items()
    }


def temp_mib(compiled) -> float | None:
    """Peak temporary memory of a compiled program (XLA's estimate), MiB."""
    try:
        return compiled.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:  # noqa: BLE001 - some backends do not report it
        return None


def _ratio(a, b):
    return None if not a or not b else a / b


def _tokens(rng, batch, length, vocab):
    return jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32)


def _init(cfg, seed=0):
    return jax.jit(sc.init_params, static_argnums=0)(cfg, jax.random.key(seed))


# --- sections ----------------------------------------------------------------------------------


def bench_ceiling(p, reps):
    """f32 matmul GFLOP/s for square n x n products: the ceiling fractions are reported on."""
    rows = []
    for n in p["ceiling_n"]:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        mm, _ = compile_fn(jnp.matmul, a, b)
        t = time_interleaved({"mm": lambda mm=mm, a=a, b=b: mm(a, b)}, reps)["mm"]
        rows.append({"n": n, **t, "gflops": 2 * n**3 / t["median_s"] / 1e9})
    return {"rows": rows, "gflops": max(r["gflops"] for r in rows)}


def bench_wake(p, reps):
    """Tokens/s of the wake loop: Python loop of jitted steps vs `stream` vs batched streams."""
    cfg = sc.ModelConfig(**p["model"])
    params = _init(cfg)
    L, T, Tpy = p["wake_window"], p["wake_tokens"], p["python_tokens"]
    rng = np.random.default_rng(0)
    state1 = sc.init_state(cfg, batch_size=1, window=L)
    toks_py = _tokens(rng, 1, Tpy, cfg.vocab_size)
    # The library's reference loop (docs/design.md's, one host round trip per token).
    python_loop = functools.partial(streaming.stream, params, state1, toks_py, 1, impl="loop")
    python_loop()  # compiles the steps
    fns = {"python_loop": python_loop}
    tokens_per_call = {"python_loop": Tpy}
    for B in (1, *p["stream_batches"]):
        st = sc.init_state(cfg, batch_size=B, window=L)
        toks = _tokens(rng, B, T, cfg.vocab_size)
        streaming.stream(params, st, toks, passes=1)  # compile
        name = "stream" if B == 1 else f"stream_B{B}"
        fns[name] = functools.partial(streaming.stream, params, st, toks, passes=1)
        tokens_per_call[name] = B * T
    t = time_interleaved(fns, reps)
    rows = [
        {
            "variant": name,
            "tokens_per_call": tokens_per_call[name],
            **t[name],
            "tokens_per_s": tokens_per_call[name] / t[name]["median_s"],
            "us_per_token": 1e6 * t[name]["median_s"] / tokens_per_call[name],
        }
        for name in fns
    ]
    tps = {r["variant"]: r["tokens_per_s"] for r in rows}

    # Wake cost vs N: a block of L-1 tokens never fills the window, so only wake runs; the
    # N-1 sleep passes are compiled into the program but never executed.
    st = sc.init_state(cfg, batch_size=1, window=L)
    toks = _tokens(rng, 1, L - 1, cfg.vocab_size)
    nfns = {}
    for N in p["wake_passes"]:
        streaming.stream(params, st, toks, passes=N)
        nfns[f"N={N}"] = functools.partial(streaming.stream, params, st, toks, passes=N)
    tn = time_interleaved(nfns, reps)
    by_n = [{"passes": N, **tn[f"N={N}"]} for N in p["wake_passes"]]
    n_lo, n_hi = p["wake_passes"][0], p["wake_passes"][-1]
    rule_level = _rule_level_wake(p, reps)
    return {
        "config": {**p["model"], "window": L, "stream_tokens": T, "python_tokens": Tpy},
        "rows": rows,
        "stream_vs_python": _ratio(tps["stream"], tps["python_loop"]),
        "rule_level": rule_level,
        "by_passes": by_n,
        "passes_ratio": _ratio(tn[f"N={n_hi}"]["median_s"], tn[f"N={n_lo}"]["median_s"]),
    }


def _rule_level_wake(p, reps):
    """docs/performance.md's rule-level comparison: the gated delta rule alone (H=4, d=64, B=1),
    a Python loop of a jitted one-token step (each output read before the next token, as a
    streaming consumer would) vs `scan_rule` over the same tokens."""
    H, d, T = 4, 64, p["wake_tokens"]
    rng = np.random.default_rng(3)
    f32 = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    rule = rules.get_rule("gated_delta")
    S0, q, k, v = f32(1, H, d, d), unit(f32(1, T, H, d)), unit(f32(1, T, H, d)), f32(1, T, H, d)
    gate = jnp.full((1, T, H), 0.9, jnp.float32)
    step = jax.jit(functools.partial(rules.rule_step, rule, None))
    scan, _ = compile_fn(lambda *a: rules.scan_rule(rule, None, *a), S0, q, k, v, gate, gate)
    cols = [tuple(x[:, t] for x in (q, k, v, gate, gate)) for t in range(T)]

    def loop():  # a streaming consumer reads each token's output before the next token
        S, outs = S0, []
        for c in cols:
            S, o = step(S, *c)
            outs.append(jax.block_until_ready(o))
        return S, outs

    loop()
    t = time_interleaved({"python_loop": loop, "scan": lambda: scan(S0, q, k, v, gate, gate)}, reps)
    return {
        "config": {"H": H, "d": d, "tokens": T},
        "python_loop_us_per_token": 1e6 * t["python_loop"]["median_s"] / T,
        "scan_us_per_token": 1e6 * t["scan"]["median_s"] / T,
        "scan_vs_python": t["python_loop"]["median_s"] / t["scan"]["median_s"],
    }


def bench_latency(p, reps):
    """Per-token wake latency at stream position ~L and ~16L: the hybrid (window L, evicting)
    vs full attention keeping its whole cache (attention-only, cache = all tokens so far).

    Two measures at each position: `stream_us_per_token`, a compiled `stream` of L-1 tokens
    from that position divided by L-1 (the compute per token; no window fills inside the
    block), and `step_call_us`, one call of a jitted `wake_step` (includes host dispatch).
    """
    base = dict(p["model"])
    layout = tuple(base.pop("layout", ("attn", "ssm", "attn", "ssm")))
    hybrid = sc.ModelConfig(layout=layout, **base)
    full = sc.ModelConfig(layout=("attn",) * len(layout), **base)
    L = p["latency_window"]
    K = L - 1  # tokens per timed block
    positions = (L, 16 * L)
    rng = np.random.default_rng(1)
    wake = _wake
    blocks, steps = {}, {}

    def add(name, params, st):
        toks = _tokens(rng, 1, K, params.config.vocab_size)
        streaming.stream(params, st, toks)  # compile
        blocks[name] = functools.partial(streaming.stream, params, st, toks)
        wake(params, st, toks[:, 0])
        steps[name] = functools.partial(wake, params, st, toks[:, 0])

    params_h = _init(hybrid)
    for pos in positions:
        # Reach stream position `pos` for real (15 evictions on the way to 16L), a window
        # at a time (one compiled block shape).
        st = sc.init_state(hybrid, batch_size=1, window=L)
        for _ in range(pos // L):
            st, _ = streaming.stream(params_h, st, _tokens(rng, 1, L, hybrid.vocab_size))
        add(f"hybrid@{pos}", params_h, st)
    params_f = _init(full)
    for pos in positions:
        # Full attention at position `pos`: a cache of pos + K slots holding pos tokens (the
        # cache contents do not change the cost; random keys/values stand in for them).
        st = sc.init_state(full, batch_size=1, window=pos + K)
        kv = lambda shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
        st = st.replace(
            keys=tuple(kv(x.shape) for x in st.keys),
            values=tuple(kv(x.shape) for x in st.values),
            pos=jnp.asarray(pos, jnp.int32),
        )
        add(f"full_attention@{pos}", params_f, st)
    tb = time_interleaved(blocks, reps=max(3 * reps, 20))
    ts = time_interleaved(steps, reps=max(5 * reps, 50))
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
    ratio = lambda m, t: _ratio(
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


def _scan_flops(L, d, H, B):
    """Per-token scan of the gated delta rule: decay d^2, read 2 d^2, write 2 d^2, readout
    2 d^2 (the decay is fused in practice: ~7 d^2 per token and head)."""
    return 7 * d * d * L * H * B


def _chunk_flops(L, d, H, B, C):
    """Our chunk form per chunk and head: Q K^T, K K^T, (I+A)^-1 U and W (each 2 C^2 d),
    the triangular inverse (C^3 / 3), [W; Q] S (4 C d^2), P V_new (2 C^2 d), K^T V_new
    (2 C d^2): per token 6 d^2 + 10 C d + C^2 / 3."""
    return (6 * d * d + 10 * C * d + C * C / 3) * L * H * B


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def bench_sleep(p, reps, ceiling):
    """One sleep pass of the gated delta rule over a window: per-token scan vs chunked."""
    H, B = p["sleep_heads"], p["sleep_batch"]
    rule = rules.get_rule("gated_delta")
    rows = []
    for L in p["sleep_L"]:
        for d in p["sleep_d"]:
            rng = np.random.default_rng(L + d)
            unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
            f32 = lambda x: jnp.asarray(x, jnp.float32)
            q = f32(unit(rng.standard_normal((B, L, H, d))))
            k = f32(unit(rng.standard_normal((B, L, H, d))))
            v = f32(rng.standard_normal((B, L, H, d)))
            alpha = f32(rng.uniform(0.5, 1.0, (B, L, H)))
            beta = f32(rng.uniform(0.0, 1.0, (B, L, H)))
            S0 = f32(rng.standard_normal((B, H, d, d)) / d)
            args = (S0, q, k, v, alpha, beta)
            progs, flops = {}, {}
            progs["scan"], _ = compile_fn(lambda *a: rules.scan_rule(rule, None, *a), *args)
            flops["scan"] = _scan_flops(L, d, H, B)
            ref = progs["scan"](*args)
            errs = {"scan": 0.0}
            for C in p["sleep_C"]:
                if C > L:
                    continue
                name = f"chunked_C{C}"
                progs[name], _ = compile_fn(lambda *a, C=C: rule.chunked(*a, None, None, C), *args)
                flops[name] = _chunk_flops(L, d, H, B, C)
                out = progs[name](*args)
                errs[name] = max(_rel_err(x, y) for x, y in zip(out, ref, strict=True))
            fns = {n: functools.partial(c, *args) for n, c in progs.items()}
            t = time_interleaved(fns, reps)
            scan_t = t["scan"]["median_s"]
            for name in progs:
                gf = flops[name] / t[name]["median_s"] / 1e9
                rows.append(
                    {
                        "L": L,
                        "d": d,
                        "H": H,
                        "B": B,
                        "variant": name,
                        **t[name],
                        "us_per_token": 1e6 * t[name]["median_s"] / (L * B),
                        "speedup_vs_scan": scan_t / t[name]["median_s"],
                        "gflops": gf,
                        "fraction_of_ceiling": gf / ceiling if ceiling else None,
                        "rel_err_vs_scan": errs[name],
                    }
                )
    return {"rows": rows}


def _masked_ce(logits, tokens):
    """Mean next-token cross-entropy; the last position (no target) is masked out."""
    targets = jnp.roll(tokens, -1, axis=1)
    mask = jnp.arange(tokens.shape[1]) < tokens.shape[1] - 1
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(mask, nll, 0.0)) / (jnp.sum(mask) * tokens.shape[0])


TRAIN_VARIANTS = {
    # name: (impl, remat); the chunked form always checkpoints its chunk body.
    "scan_plain": ("scan", "none"),
    "chunked_plain": ("chunked", "none"),
    "chunked_remat_pass": ("chunked", "pass"),
}


def bench_train(p, reps):
    """value_and_grad of a masked cross-entropy of `forward` vs N, plain vs rematerialised."""
    L = p["train_window"]
    T = L * p["train_windows"]
    base = sc.ModelConfig(chunk_size=p["train_chunk"], **p["train_model"])
    params = _init(base)
    tokens = _tokens(np.random.default_rng(2), 1, T, base.vocab_size)
    rows = []
    variants = p.get("train_variants", tuple(TRAIN_VARIANTS))
    for N in p["train_N"]:
        progs, mem, fwd_name = {}, {}, {}
        for name in variants:
            impl, remat = TRAIN_VARIANTS[name]
            pv = params.replace(config=dataclasses.replace(base, impl=impl))

            def loss(pv, toks, remat=remat, N=N):
                logits = sc.forward(pv, toks, window=L, passes=N, remat=remat)
                return _masked_ce(logits, toks)

            progs[name], _ = compile_fn(jax.value_and_grad(loss), pv, tokens)
            mem[name] = temp_mib(progs[name])
            progs[name] = functools.partial(progs[name], pv, tokens)
            fwd = f"forward_{impl}"
            if fwd not in progs:
                c, _ = compile_fn(functools.partial(sc.forward, window=L, passes=N), pv, tokens)
                progs[fwd] = functools.partial(c, pv, tokens)
            fwd_name[name] = fwd
        t = time_interleaved(progs, reps)
        for name in variants:
            rows.append(
                {
                    "N": N,
                    "variant": name,
                    **t[name],
                    "temp_mib": mem[name],
                    "forward_s": t[fwd_name[name]]["median_s"],
                    "step_over_forward": t[name]["median_s"] / t[fwd_name[name]]["median_s"],
                }
            )
    return {
        "config": {**p["train_model"], "window": L, "tokens": T, "chunk_size": base.chunk_size},
        "rows": rows,
        "rule_level": bench_train_rule(p, reps),
    }


RULE_TRAIN_VARIANTS = {
    # name: (chunk size or None for the per-token scan, checkpoint each pass)
    "scan_plain": (None, False),
    "chunked_plain": (32, False),
    "chunked_remat_pass": (32, True),
}


def bench_train_rule(p, reps):
    """docs/performance.md's BPTT measurement: the gated delta rule alone, N passes over one
    window (each pass re-reads the window from where the last one left S), gradient of a
    loss on every pass's outputs and the final S w.r.t. S0, q, k, v and both gates."""
    L, H, d = p["train_rule_L"], 4, 64
    rng = np.random.default_rng(4)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    args = (
        f32(rng.standard_normal((1, H, d, d)) / d),
        f32(unit(rng.standard_normal((1, L, H, d)))),
        f32(unit(rng.standard_normal((1, L, H, d)))),
        f32(rng.standard_normal((1, L, H, d))),
        f32(rng.uniform(0.5, 1.0, (1, L, H))),
        f32(rng.uniform(0.0, 1.0, (1, L, H))),
    )
    rule = rules.get_rule("gated_delta")
    rows = []
    for N in p["train_rule_N"]:
        progs, mem = {}, {}
        for name in p.get("train_rule_variants", tuple(RULE_TRAIN_VARIANTS)):
            C, remat_pass = RULE_TRAIN_VARIANTS[name]

            def one_pass(S, a, C=C):
                if C is None:
                    return rules.scan_rule(rule, None, S, *a)
                return rule.chunked(S, *a, None, None, C)

            def passes(S0, *a, one_pass=one_pass, remat_pass=remat_pass, N=N):
                body = lambda S, _: one_pass(S, a)[::-1]  # (S_new, o)
                if remat_pass:
                    body = jax.checkpoint(body)
                S, o = jax.lax.scan(body, S0, None, length=N)
                return jnp.mean(o * o) + jnp.mean(S * S)

            progs[name], _ = compile_fn(jax.value_and_grad(passes, argnums=range(6)), *args)
            mem[name] = temp_mib(progs[name])
            progs[name] = functools.partial(progs[name], *args)
            fwd = "forward_scan" if C is None else "forward_chunked"
            if fwd not in progs:
                c, _ = compile_fn(passes, *args)
                progs[fwd] = functools.partial(c, *args)
        t = time_interleaved(progs, reps)
        for name in mem:
            fwd = "forward_scan" if RULE_TRAIN_VARIANTS[name][0] is None else "forward_chunked"
            rows.append(
                {
                    "N": N,
                    "variant": name,
                    **t[name],
                    "temp_mib": mem[name],
                    "forward_s": t[fwd]["median_s"],
                    "step_over_forward": t[name]["median_s"] / t[fwd]["median_s"],
                }
            )
    return {"config": {"rule": "gated_delta", "L": L, "H": H, "d": d, "B": 1}, "rows": rows}


# --- targets -----------------------------------------------------------------------------------


def _target(name, want, measured, passed, note=""):
    return {"target": name, "want": want, "measured": measured, "status": passed, "note": note}


def _train_targets(level, rows, fmt, status):
    """Training targets for one table of rows (N, variant, median_s, temp_mib, ...)."""
    out = []
    get = lambda v, N: next((r for r in rows if r["variant"] == v and r["N"] == N), {})
    Ns = sorted({r["N"] for r in rows})
    best = "chunked_remat_pass"
    ratios = [get(best, N).get("step_over_forward") for N in Ns]
    worst = max((r for r in ratios if r is not None), default=None)
    out.append(
        _target(
            f"training ({level}): gradient step <= 5x the forward (chunked, remat=pass)",
            "<= 5x",
            "N=" + ", ".join(f"{N}: {fmt(r)}" for N, r in zip(Ns, ratios, strict=True)),
            status(None if worst is None else worst <= 5),
        )
    )
    mems = {
        N: _ratio(get("scan_plain", N).get("temp_mib"), get(best, N).get("temp_mib")) for N in Ns
    }
    ref = 4 if 4 in mems else Ns[-1]  # docs/performance.md's reference point is N=4
    out.append(
        _target(
            f"training ({level}): BPTT memory >= 10x below plain per-token scan",
            f">= 10x at N={ref}",
            "N=" + ", ".join(f"{N}: {fmt(m)}" for N, m in mems.items()),
            status(None if mems.get(ref) is None else mems[ref] >= 10),
        )
    )
    flat = None
    if len(Ns) >= 2:
        flat = _ratio(get(best, Ns[-1]).get("temp_mib"), get(best, Ns[0]).get("temp_mib"))
    out.append(
        _target(
            f"training ({level}): memory flat in N (N={Ns[-1]} vs N={Ns[0]}, remat=pass)",
            "within 1.5x",
            f"{fmt(flat)}",
            status(None if flat is None else flat <= 1.5),
        )
    )
    ts = [get(best, N).get("median_s") for N in Ns]
    if len(Ns) >= 3 and None not in ts:
        ts = np.array(ts)
        A = np.stack([np.ones(len(Ns)), np.array(Ns, float)], 1)
        coef = np.linalg.lstsq(A, ts, rcond=None)[0]
        dev = float(np.max(np.abs(A @ coef - ts) / ts))
        out.append(
            _target(
                f"cost in N ({level}): step time linear in N (remat=pass, LSQ fit)",
                "within 15%",
                f"max deviation {100 * dev:.1f}%",
                status(dev <= 0.15),
            )
        )
    return out


def evaluate_targets(res: dict) -> list[dict]:
    """docs/performance.md's targets, each 'pass', 'miss' or 'n/a' with the measured ratio."""
    out = []
    fmt = lambda x: "n/a" if x is None else f"{x:.3g}x"  # a ratio
    status = lambda ok: "n/a" if ok is None else ("pass" if ok else "miss")
    w = res.get("wake")
    if w:
        r = w["stream_vs_python"]
        rl = w["rule_level"]["scan_vs_python"]
        out.append(
            _target(
                "wake: stream vs Python loop of jitted steps (whole model)",
                ">= 50x",
                f"{fmt(r)}",
                status(r >= 50),
                note=f"rule alone (docs/performance.md's measurement): {fmt(rl)}",
            )
        )
        out.append(
            _target(
                "wake: scan vs Python loop of jitted steps (rule alone, H=4, d=64)",
                ">= 50x",
                f"{fmt(rl)}",
                status(rl >= 50),
            )
        )
        r = w["passes_ratio"] if len(w["by_passes"]) >= 2 else None
        ns = (w["by_passes"][0]["passes"], w["by_passes"][-1]["passes"])
        out.append(
            _target(
                "cost in N: wake cost does not grow with N",
                f"N={ns[1]} within 10% of N={ns[0]}",
                f"{fmt(r)}",
                status(None if r is None else abs(r - 1) <= 0.10),
            )
        )
    lat = res.get("latency")
    if lat:
        h, f = lat["hybrid_ratio"], lat["full_attention_ratio"]
        out.append(
            _target(
                "wake latency flat in stream length (16L vs L)",
                "within 10%",
                f"hybrid {fmt(h)}, full attention {fmt(f)}",
                status(abs(h - 1) <= 0.10 and f > 1.10),
            )
        )
    s = res.get("sleep")
    if s:
        big = [r for r in s["rows"] if r["L"] >= 1024 and r["d"] >= 64]
        best = {}
        for r in big:
            if r["variant"] != "scan":
                key = (r["L"], r["d"])
                best[key] = max(best.get(key, 0.0), r["speedup_vs_scan"])
        err = max((r["rel_err_vs_scan"] for r in s["rows"]), default=None)
        if best:
            lo = min(best.values())
            detail = ", ".join(f"L={L},d={d}: {v:.2f}x" for (L, d), v in sorted(best.items()))
            out.append(
                _target(
                    "sleep: chunked >= 2x per-token scan (L>=1024, d>=64, CPU)",
                    ">= 2x (best C)",
                    f"min {lo:.2f}x ({detail})",
                    status(lo >= 2),
                )
            )
        else:
            out.append(
                _target(
                    "sleep: chunked >= 2x per-token scan (L>=1024, d>=64, CPU)",
                    ">= 2x",
                    "not measured at these sizes",
                    "n/a",
                )
            )
        out.append(
            _target(
                "sleep: identical results",
                "rel. err <= 1e-5",
                "n/a" if err is None else f"{err:.3g}",
                status(err is not None and err <= 1e-5),
            )
        )
        on_gpu = res["meta"]["backend"] == "gpu"
        gpu4k = [r for r in s["rows"] if r["L"] >= 4096 and r["variant"] != "scan"]
        g = max((r["speedup_vs_scan"] for r in gpu4k), default=None)
        out.append(
            _target(
                "sleep: chunked >= 10x scan on GPU at L >= 4K",
                ">= 10x",
                f"{fmt(g)}" if on_gpu else "not a GPU run",
                status(g >= 10) if on_gpu and g is not None else "n/a",
            )
        )
    tr = res.get("train")
    if tr:
        levels = [("model", tr["rows"])]
        if tr.get("rule_level"):
            levels.append(("rule alone", tr["rule_level"]["rows"]))
        for level, rows in levels:
            out += _train_targets(level, rows, fmt, status)
    out.append(
        _target(
            "scale-out: 8 simulated devices == 1 device",
            "<= 1e-5",
            "not measured here (tests/test_sharding.py)",
            "n/a",
        )
    )
    return out


# --- driver ------------------------------------------------------------------------------------


def _meta(mode, command):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "mode": mode,
        "command": command,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def run(
    mode: str = "quick",
    sections=SECTIONS,
    reps: int | None = None,
    log=print,
    command: str = "experiments.benchmark.run()",
) -> dict:
    """Runs the benchmark sections at `mode` sizes; returns the results dict."""
    if mode not in PRESETS:
        raise ValueError(f"mode must be one of {tuple(PRESETS)}, got {mode!r}")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {SECTIONS}")
    p = PRESETS[mode]
    reps = p["reps"] if reps is None else reps
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    res: dict[str, Any] = {"meta": _meta(mode, command), "preset": _jsonable(p), "reps": reps}
    t_all = time.perf_counter()
    ceiling = None
    for sec in SECTIONS:
        if sec not in sections:
            continue
        t0 = time.perf_counter()
        if sec == "ceiling":
            res[sec] = bench_ceiling(p, reps)
            ceiling = res[sec]["gflops"]
        elif sec == "wake":
            res[sec] = bench_wake(p, reps)
        elif sec == "latency":
            res[sec] = bench_latency(p, reps)
        elif sec == "sleep":
            res[sec] = bench_sleep(p, reps, ceiling)
        elif sec == "train":
            res[sec] = bench_train(p, reps)
        elif sec == "research":
            res[sec] = bench_research.bench_research(p, reps, ceiling, time_interleaved, log)
        res[sec]["seconds"] = time.perf_counter() - t0
        log(f"[benchmark] {sec}: {res[sec]['seconds']:.1f}s")
    res["targets"] = evaluate_targets(res)
    res["meta"]["seconds"] = time.perf_counter() - t_all
    return res


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _t(s):
    return f"{1e3 * s:.3g}"


def to_markdown(res: dict) -> str:
    m = res["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"`{m['command']}` ({m['mode']} mode, {res['reps']} timed reps per variant), "
        f"{m['date_utc']}: JAX {m['jax']}, backend {m['backend']} ({m['device_kind']}), "
        f"{m['cpu']}, {m['cpu_count']} cores; {m['seconds']:.0f} s in all. Times are medians "
        "(min-max) in ms of interleaved runs; ratios are between medians of one process.",
        "",
        "## Targets (docs/performance.md)",
        "",
    ]
    lines += _table(
        ["target", "want", "measured", "status"],
        [
            (
                t["target"],
                t["want"],
                t["measured"] + (f" ({t['note']})" if t["note"] else ""),
                f"**{t['status']}**",
            )
            for t in res["targets"]
        ],
    )
    if "ceiling" in res:
        c = res["ceiling"]
        lines += ["", f"## f32 matmul ceiling: {c['gflops']:.0f} GFLOP/s", ""]
        lines += _table(
            ["n", "ms", "GFLOP/s"],
            [
                (
                    r["n"],
                    f"{_t(r['median_s'])} ({_t(r['min_s'])}-{_t(r['max_s'])})",
                    f"{r['gflops']:.0f}",
                )
                for r in c["rows"]
            ],
        )
    if "wake" in res:
        w = res["wake"]
        lines += ["", f"## Wake throughput ({_cfgline(w['config'])})", ""]
        lines += _table(
            ["variant", "tokens/call", "ms/call", "us/token", "tokens/s"],
            [
                (
                    r["variant"],
                    r["tokens_per_call"],
                    f"{_t(r['median_s'])} ({_t(r['min_s'])}-{_t(r['max_s'])})",
                    f"{r['us_per_token']:.3g}",
                    f"{r['tokens_per_s']:.4g}",
                )
                for r in w["rows"]
            ],
        )
        rl = w["rule_level"]
        lines += [
            "",
            f"stream / Python loop: **{w['stream_vs_python']:.3g}x**. Rule alone "
            f"({_cfgline(rl['config'])}): scan {rl['scan_us_per_token']:.3g} us/token vs "
            f"Python loop {rl['python_loop_us_per_token']:.3g} us/token, "
            f"**{rl['scan_vs_python']:.3g}x**. "
            "Stream of L-1 tokens (no window fills) vs N:",
            "",
        ]
        lines += _table(
            ["N", "ms"],
            [
                (r["passes"], f"{_t(r['median_s'])} ({_t(r['min_s'])}-{_t(r['max_s'])})")
                for r in w["by_passes"]
            ],
        )
    if "latency" in res:
        lt = res["latency"]
        lines += [
            "",
            f"## Per-token wake latency vs stream position ({_cfgline(lt['config'])})",
            "",
        ]
        lines += _table(
            ["model@position", "us/token in a compiled stream (min-max)", "jitted step call us"],
            [
                (
                    r["variant"],
                    f"{r['stream_us_per_token']:.4g} ({r['stream_min_us']:.4g}-"
                    f"{r['stream_max_us']:.4g})",
                    f"{r['step_call_us']:.4g}",
                )
                for r in lt["rows"]
            ],
        )
        lines += [
            "",
            f"16L / L, per token in a stream: hybrid **{lt['hybrid_ratio']:.3g}x**, full "
            f"attention **{lt['full_attention_ratio']:.3g}x** (single jitted calls, dispatch "
            f"included: {lt['hybrid_step_call_ratio']:.3g}x and "
            f"{lt['full_attention_step_call_ratio']:.3g}x).",
        ]
    if "sleep" in res:
        lines += ["", "## One sleep pass (gated delta rule): per-token scan vs chunked", ""]
        lines += _table(
            [
                "L",
                "d",
                "variant",
                "ms (min-max)",
                "us/token",
                "speedup",
                "GFLOP/s",
                "of ceiling",
                "rel. err",
            ],
            [
                (
                    r["L"],
                    r["d"],
                    r["variant"],
                    f"{_t(r['median_s'])} ({_t(r['min_s'])}-{_t(r['max_s'])})",
                    f"{r['us_per_token']:.3g}",
                    f"{r['speedup_vs_scan']:.2f}x",
                    f"{r['gflops']:.0f}",
                    "n/a"
                    if r["fraction_of_ceiling"] is None
                    else f"{100 * r['fraction_of_ceiling']:.0f}%",
                    f"{r['rel_err_vs_scan']:.1e}",
                )
                for r in res["sleep"]["rows"]
            ],
        )
    if "train" in res:
        tr = res["train"]
        lines += ["", f"## Training step vs N ({_cfgline(tr['config'])})", ""]
        lines += _table(
            ["N", "variant", "step ms (min-max)", "forward ms", "step/forward", "temp MiB"],
            [
                (
                    r["N"],
                    r["variant"],
                    f"{_t(r['median_s'])} ({_t(r['min_s'])}-{_t(r['max_s'])})",
                    _t(r["forward_s"]),
                    f"{r['step_over_forward']:.2f}",
                    "n/a" if r["temp_mib"] is None else f"{r['temp_mib']:.1f}",
                )
                for r in tr["rows"]
            ],
        )
    rl = res.get("train", {}).get("rule_level")
    if rl:
        lines += ["", f"## BPTT through N passes of the rule alone ({_cfgline(rl['config'])})", ""]
        lines += _table(
            ["N", "variant", "step ms (min-max)", "forward ms", "step/forward", "temp MiB"],
            [
                (
                    r["N"],
                    r["variant"],
                    f"{_t(r['median_s'])} ({_t(r['min_s'])}-{_t(r['max_s'])})",
                    _t(r["forward_s"]),
                    f"{r['step_over_forward']:.2f}",
                    "n/a" if r["temp_mib"] is None else f"{r['temp_mib']:.1f}",
                )
                for r in rl["rows"]
            ],
        )
    if "research" in res:
        ceiling = res.get("ceiling", {}).get("gflops")
        lines += [""] + bench_research.to_markdown(res["research"], ceiling)
    return "\n".join(lines) + "\n"


def _cfgline(cfg):
    return ", ".join(f"{k}={v}" for k, v in cfg.items())


def write(res: dict, out: str, md: str | None = None) -> tuple[str, str]:
    md = md or os.path.splitext(out)[0] + ".md"
    for path in (out, md):
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(out, "w") as f:
        json.dump(_jsonable(res), f, indent=1)
        f.write("\n")
    with open(md, "w") as f:
        f.write(to_markdown(res))
    return out, md


def main(argv):
    del argv
    mode = "quick" if FLAGS.quick else FLAGS.mode
    command = " ".join(["python -m experiments.benchmark", *sys.argv[1:]])
    res = run(mode, tuple(FLAGS.sections), FLAGS.reps, command=command)
    out, md = write(res, FLAGS.out, FLAGS.md)
    print(to_markdown(res))
    print(f"[benchmark] wrote {out} and {md}")


if __name__ == "__main__":
    app.run(main)
