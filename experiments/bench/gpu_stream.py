"""The GPU check's stream part: `sc.stream` == `sc.forward` (logits and fast weights) on a
small hybrid model, per impl and matmul precision: max abs / rel error."""

from __future__ import annotations

import jax

import sleep_consolidation as sc
from experiments.bench import measure


def merge_errors(pairs) -> dict[str, float]:
    """The worst `measure.errors` over pairs (a, b)."""
    es = [measure.errors(a, b) for a, b in pairs]
    return {k: max(e[k] for e in es) for k in ("max_abs", "max_rel")}


def check(tiny: bool) -> dict:
    """stream vs forward, logits and fast weights, per impl and matmul precision."""
    if tiny:  # CPU seconds: one impl, one precision, two blocks
        kw = dict(vocab_size=11, d_model=16, num_heads=2, chunk_size=4)
        B, T, window, passes, layout = 2, 7, 3, 2, ("attn", "ssm")
        impls, precisions = ("chunked",), ("highest",)
    else:
        kw = dict(vocab_size=64, d_model=256, num_heads=4, chunk_size=16)
        B, T, window, passes, layout = 4, 200, 24, 3, ("attn", "ssm", "attn", "ssm")
        impls, precisions = ("scan", "chunked"), ("highest", "default")
    fwd = jax.jit(sc.forward, static_argnames=("window", "passes", "return_fast"))
    rows = []
    for impl in impls:
        cfg = sc.ModelConfig(layout=layout, impl=impl, **kw)
        params = sc.init_params(cfg, jax.random.key(0))
        tokens = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)
        for precision in precisions:
            with jax.default_matmul_precision(precision):
                state, streamed = sc.stream(
                    params, sc.init_state(cfg, batch_size=B, window=window), tokens, passes
                )
                logits, fast = fwd(params, tokens, window=window, passes=passes, return_fast=True)
            # The fast weights agree only if the last window did not sleep (T % window != 0).
            row = {
                "impl": impl,
                "precision": precision,
                "logits": measure.errors(streamed, logits),
                "fast": merge_errors(
                    zip(jax.tree.leaves(state.fast), jax.tree.leaves(fast), strict=True)
                ),
            }
            rows.append(row)
    return {
        "model": {**kw, "layout": layout, "B": B, "T": T, "window": window, "passes": passes},
        "rows": rows,
    }


def markdown(sec: dict) -> list[str]:
    lines = ["## stream == forward", "", f"Model: {sec['model']}", "",
             "| impl | precision | logits max abs | logits max rel | fast max abs | "
             "fast max rel |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in sec["rows"]:
        lines.append(f"| {r['impl']} | {r['precision']} | {r['logits']['max_abs']:.2e} | "
                     f"{r['logits']['max_rel']:.2e} | {r['fast']['max_abs']:.2e} | "
                     f"{r['fast']['max_rel']:.2e} |")  # fmt: skip
    return lines + [""]
