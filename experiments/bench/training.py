"""The train section: value_and_grad of a masked cross-entropy of `forward` vs N (step time,
forward time, peak temporary memory from XLA's memory_analysis, plain vs rematerialised),
and the same for N passes of the gated delta rule alone (docs/performance.md's BPTT
measurement)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

import sleep_consolidation as sc
from experiments.bench import inputs, measure

TRAIN_VARIANTS = {
    # name: (impl, remat); the chunked form always checkpoints its chunk body.
    "scan_plain": ("scan", "none"),
    "chunked_plain": ("chunked", "none"),
    "chunked_remat_pass": ("chunked", "pass"),
    # each window recomputed and, inside, each pass: the least memory (BUILD_NOTES.md
    # "Memory in N")
    "chunked_remat_window_pass": ("chunked", "window+pass"),
}

RULE_TRAIN_VARIANTS = {
    # name: (chunk size or None for the per-token scan, checkpoint each pass)
    "scan_plain": (None, False),
    "chunked_plain": (32, False),
    "chunked_remat_pass": (32, True),
}


def masked_ce(logits, tokens):
    """Mean next-token cross-entropy; the last position (no target) is masked out."""
    targets = jnp.roll(tokens, -1, axis=1)
    mask = jnp.arange(tokens.shape[1]) < tokens.shape[1] - 1
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(mask, nll, 0.0)) / (jnp.sum(mask) * tokens.shape[0])


def _step_row(N, name, t, mem, fwd) -> dict:
    """One table row: the gradient step `name` against the forward program `fwd`."""
    return {
        "N": N,
        "variant": name,
        **t[name],
        "temp_mib": mem[name],
        "forward_s": t[fwd]["median_s"],
        "step_over_forward": t[name]["median_s"] / t[fwd]["median_s"],
    }


def run(p: dict, reps: int) -> dict:
    """Whole-model rows per (N, variant) and the rule-level ones (`rule_level`)."""
    L = p["train_window"]
    T = L * p["train_windows"]
    base = sc.ModelConfig(chunk_size=p["train_chunk"], **p["train_model"])
    params = inputs.init_params(base)
    tokens = inputs.tokens(np.random.default_rng(2), 1, T, base.vocab_size)
    rows = []
    variants = p.get("train_variants", tuple(TRAIN_VARIANTS))
    for N in p["train_N"]:
        progs, mem, fwd_name = {}, {}, {}
        for name in variants:
            impl, remat = TRAIN_VARIANTS[name]
            pv = params.replace(config=dataclasses.replace(base, impl=impl))

            def loss(pv, toks, remat=remat, N=N):
                logits = sc.forward(pv, toks, window=L, passes=N, remat=remat)
                return masked_ce(logits, toks)

            progs[name], _ = measure.compile_fn(jax.value_and_grad(loss), pv, tokens)
            mem[name] = measure.temp_mib(progs[name])
            progs[name] = functools.partial(progs[name], pv, tokens)
            fwd = f"forward_{impl}"
            if fwd not in progs:
                fw = functools.partial(sc.forward, window=L, passes=N)
                c, _ = measure.compile_fn(fw, pv, tokens)
                progs[fwd] = functools.partial(c, pv, tokens)
            fwd_name[name] = fwd
        t = measure.time_interleaved(progs, reps)
        rows += [_step_row(N, name, t, mem, fwd_name[name]) for name in variants]
    return {
        "config": {**p["train_model"], "window": L, "tokens": T, "chunk_size": base.chunk_size},
        "rows": rows,
        "rule_level": run_rule(p, reps),
    }


def _passes_loss(rule, C, remat_pass, N):
    """Loss of N passes of `rule` over one window (each pass re-reads the window from where
    the last one left S): mean square of every pass's outputs plus that of the final S."""

    def one_pass(S, a):
        if C is None:
            return sc.scan_rule(rule, None, S, *a)
        return rule.chunked(S, *a, None, None, C)

    def passes(S0, *a):
        body = lambda S, _: one_pass(S, a)[::-1]  # (S_new, o)
        if remat_pass:
            body = jax.checkpoint(body)
        S, o = jax.lax.scan(body, S0, None, length=N)
        return jnp.mean(o * o) + jnp.mean(S * S)

    return passes


def _rule_forward(variant: str) -> str:
    """The forward program a rule-level variant's step is compared with."""
    return "forward_scan" if RULE_TRAIN_VARIANTS[variant][0] is None else "forward_chunked"


def run_rule(p: dict, reps: int) -> dict:
    """docs/performance.md's BPTT measurement: the gated delta rule alone, N passes over one
    window, gradient of a loss on every pass's outputs and the final S w.r.t. S0, q, k, v
    and both gates."""
    L, H, d = p["train_rule_L"], 4, 64
    args = inputs.device_args(inputs.rule_inputs(np.random.default_rng(4), 1, L, H, d))
    rule = sc.get_rule("gated_delta")
    rows = []
    for N in p["train_rule_N"]:
        progs, mem = {}, {}
        for name in p.get("train_rule_variants", tuple(RULE_TRAIN_VARIANTS)):
            C, remat_pass = RULE_TRAIN_VARIANTS[name]
            passes = _passes_loss(rule, C, remat_pass, N)
            grad = jax.value_and_grad(passes, argnums=range(6))
            progs[name], _ = measure.compile_fn(grad, *args)
            mem[name] = measure.temp_mib(progs[name])
            progs[name] = functools.partial(progs[name], *args)
            if _rule_forward(name) not in progs:
                c, _ = measure.compile_fn(passes, *args)
                progs[_rule_forward(name)] = functools.partial(c, *args)
        t = measure.time_interleaved(progs, reps)
        rows += [_step_row(N, name, t, mem, _rule_forward(name)) for name in mem]
    return {"config": {"rule": "gated_delta", "L": L, "H": H, "d": d, "B": 1}, "rows": rows}


def _step_table(title: str, sec: dict) -> list[str]:
    lines = ["", f"## {title} ({measure.cfgline(sec['config'])})", ""]
    return lines + measure.table(
        ["N", "variant", "step ms (min-max)", "forward ms", "step/forward", "temp MiB"],
        [
            (
                r["N"],
                r["variant"],
                measure.ms_range(r),
                measure.ms(r["forward_s"]),
                f"{r['step_over_forward']:.2f}",
                "n/a" if r["temp_mib"] is None else f"{r['temp_mib']:.1f}",
            )
            for r in sec["rows"]
        ],
    )


def markdown(sec: dict) -> list[str]:
    lines = _step_table("Training step vs N", sec)
    if sec.get("rule_level"):
        lines += _step_table("BPTT through N passes of the rule alone", sec["rule_level"])
    return lines
