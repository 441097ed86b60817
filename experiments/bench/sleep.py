"""The sleep section: one pass of the gated delta rule over a window, per-token scan vs the
chunked form over chunk sizes, with GFLOP/s from formulas and the agreement of the two."""

from __future__ import annotations

import functools

import numpy as np

import sleep_consolidation as sc
from experiments.bench import flops, inputs, measure


def run(p: dict, reps: int, ceiling: float | None) -> dict:
    """Rows per (L, d, variant) of p["sleep_L"] x p["sleep_d"] x (scan, chunk sizes)."""
    rows = []
    for L in p["sleep_L"]:
        for d in p["sleep_d"]:
            rows += _rows(p, reps, ceiling, L, d)
    return {"rows": rows}


def _rows(p, reps, ceiling, L, d) -> list[dict]:
    H, B = p["sleep_heads"], p["sleep_batch"]
    rule = sc.get_rule("gated_delta")
    x = inputs.rule_inputs(np.random.default_rng(L + d), B, L, H, d, s0_last=True)
    args = inputs.device_args(x)
    progs, fl = {}, {}
    progs["scan"], _ = measure.compile_fn(lambda *a: sc.scan_rule(rule, None, *a), *args)
    fl["scan"] = flops.scan_flops(L, d, H, B)
    ref = progs["scan"](*args)
    errs = {"scan": 0.0}
    for C in p["sleep_C"]:
        if C > L:
            continue
        name = f"chunked_C{C}"
        progs[name], _ = measure.compile_fn(lambda *a, C=C: rule.chunked(*a, None, None, C), *args)
        fl[name] = flops.chunk_flops(L, d, H, B, C)
        out = progs[name](*args)
        errs[name] = max(measure.rel_err(o, r) for o, r in zip(out, ref, strict=True))
    t = measure.time_interleaved({n: functools.partial(c, *args) for n, c in progs.items()}, reps)
    scan_t = t["scan"]["median_s"]
    rows = []
    for name in progs:
        gf = fl[name] / t[name]["median_s"] / 1e9
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
    return rows


def markdown(sec: dict) -> list[str]:
    lines = ["", "## One sleep pass (gated delta rule): per-token scan vs chunked", ""]
    headers = ["L", "d", "variant", "ms (min-max)", "us/token", "speedup", "GFLOP/s"]
    return lines + measure.table(
        [*headers, "of ceiling", "rel. err"],
        [
            (
                r["L"],
                r["d"],
                r["variant"],
                measure.ms_range(r),
                f"{r['us_per_token']:.3g}",
                f"{r['speedup_vs_scan']:.2f}x",
                f"{r['gflops']:.0f}",
                "n/a"
                if r["fraction_of_ceiling"] is None
                else f"{100 * r['fraction_of_ceiling']:.0f}%",
                f"{r['rel_err_vs_scan']:.1e}",
            )
            for r in sec["rows"]
        ],
    )
