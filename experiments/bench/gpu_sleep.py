"""The GPU check's sleep part: one sleep pass of the gated delta rule, the per-token
`scan_rule` vs our chunked form (chunk sizes x matmul precisions), per batch size and input
dtype, with fla's kernel timed alongside when it is there (fla_compare.py)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import sleep_consolidation as sc
from experiments.bench import fla_compare, flops, inputs, measure

REFERENCE = "f32 scan_rule, precision=highest"
DTYPES = (("float32", jnp.float32), ("bfloat16", jnp.bfloat16))


def run(s: dict, with_fla: bool, deadline: float, log=print, progress=None):
    """Our variants (and fla's kernel) per (B, dtype) at shapes `s` (`gpu_suite.shapes`);
    a case that would start after `deadline` is skipped. `progress` gets the sleep part so
    far after each case. Returns (the sleep part, the fla part)."""
    loaded = fla_compare.load() if with_fla else "fla section not requested"
    kernel = None if isinstance(loaded, str) else loaded
    rows, fla_rows, skipped = [], [], []
    ref_C = 64 if 64 in s["chunks"] else s["chunks"][-1]
    ours_name = f"chunked_C{ref_C}_{s['precisions'][0]}"  # the variant fla is compared with
    for B in s["batches"]:
        x = inputs.rule_inputs(np.random.default_rng(B), B, s["T"], s["H"], s["d"])
        for dname, dtype in DTYPES:
            if time.perf_counter() > deadline:
                skipped.append(f"B={B} {dname}")
                continue
            case = {"B": B, "T": s["T"], "H": s["H"], "d": s["d"], "dtype": dname}
            case_rows, fla_row = _case(s, case, inputs.device_args(x, dtype), kernel, ours_name)
            rows += case_rows
            if fla_row is not None:
                fla_rows.append(fla_row)
            scan_t = case_rows[0]["median_s"]
            best = min(case_rows, key=lambda r: r["median_s"])
            if progress is not None:
                progress({"rows": rows, "skipped": skipped, "reference": REFERENCE})
            log(f"[sleep] B={B} {dname}: scan {1e3 * scan_t:.2f} ms, best {best['variant']} "
                f"{1e3 * best['median_s']:.2f} ms ({best['speedup_vs_scan']:.1f}x)")  # fmt: skip
    sleep = {"rows": rows, "skipped": skipped, "reference": REFERENCE}
    return sleep, fla_compare.section(loaded, fla_rows, ours_name)


def _programs(s: dict, args, B: int):
    """Our compiled variants: "scan", then "chunked_C{C}_{precision}" for each chunk size
    and matmul precision; returns (programs, compile seconds, FLOPs) keyed by name."""
    T, H, d = s["T"], s["H"], s["d"]
    rule = sc.get_rule("gated_delta")
    progs, compile_s, fl = {}, {}, {}
    progs["scan"], compile_s["scan"] = measure.compile_fn(
        lambda *a: sc.scan_rule(rule, None, *a), *args
    )
    fl["scan"] = flops.scan_flops(T, d, H, B)
    for C in s["chunks"]:
        for prec in s["precisions"]:
            name = f"chunked_C{C}_{prec}"
            with jax.default_matmul_precision(prec):
                progs[name], compile_s[name] = measure.compile_fn(
                    lambda *a, C=C: rule.chunked(*a, None, None, C), *args
                )
            fl[name] = flops.chunk_flops(T, d, H, B, C)
    return progs, compile_s, fl


def _reference(args):
    """The f32 per-token scan at "highest" on the (dtype-rounded) inputs `args`."""
    rule = sc.get_rule("gated_delta")
    ref_args = tuple(a.astype(jnp.float32) for a in args)
    with jax.default_matmul_precision("highest"):
        ref_prog, _ = measure.compile_fn(lambda *a: sc.scan_rule(rule, None, *a), *ref_args)
    return jax.block_until_ready(ref_prog(*ref_args))


def _case(s: dict, case: dict, args, kernel, ours_name: str):
    """One (B, dtype): errors against the reference, then every variant (and fla's kernel
    if `kernel` is not None) timed interleaved. Returns (our rows, fla's row or None)."""
    B, T, H = case["B"], case["T"], case["H"]
    ref = _reference(args)
    progs, compile_s, fl = _programs(s, args, B)
    outs, errs = {}, {}
    for name, prog in progs.items():
        outs[name] = prog(*args)
        errs[name] = {"o": measure.rel_err(outs[name][0], ref[0]),
                      "S": measure.rel_err(outs[name][1], ref[1])}  # fmt: skip
    fns = {n: (lambda p=p, a=args: p(*a)) for n, p in progs.items()}
    fla_info = None
    if kernel is not None:
        fla_info, fla_fn = fla_compare.side_by_side(kernel, args, ref, outs[ours_name])
        if fla_fn is not None:
            fns["fla"] = fla_fn
    t = measure.time_interleaved(fns, s["reps"])
    scan_t = t["scan"]["median_s"]
    rows = []
    for name in progs:
        med = t[name]["median_s"]
        rows.append({
            **case, "variant": name,
            **t[name], "compile_s": compile_s[name], "tokens_per_s": B * T / med,
            "ns_per_token_head": 1e9 * med / (B * T * H),
            "speedup_vs_scan": scan_t / med, "tflops": fl[name] / med / 1e12,
            "rel_err_o": errs[name]["o"], "rel_err_S": errs[name]["S"],
        })  # fmt: skip
    fla_row = None if fla_info is None else fla_compare.row(case, fla_info, t, ours_name)
    return rows, fla_row


def markdown(sec: dict) -> list[str]:
    lines = ["## One sleep pass: per-token scan vs chunked (gated delta)", "",
             f"Agreement: max rel. error of o and S_T against the {sec['reference']} on "
             "the same dtype-rounded inputs. Times: median (min-max) of interleaved reps.",
             "", "| B | T | H | d | dtype | variant | ms (min-max) | tokens/s | "
             "ns/token/head | vs scan | TFLOP/s | rel err o | rel err S | compile s |",
             "|" + "---|" * 14]  # fmt: skip
    for r in sec["rows"]:
        lines.append(
            f"| {r['B']} | {r['T']} | {r['H']} | {r['d']} | {r['dtype']} | {r['variant']} "
            f"| {measure.ms_range(r)} "
            f"| {r['tokens_per_s']:.3g} | {r['ns_per_token_head']:.3g} | "
            f"{r['speedup_vs_scan']:.1f}x | {r['tflops']:.3g} | {r['rel_err_o']:.1e} | "
            f"{r['rel_err_S']:.1e} | {r['compile_s']:.1f} |"
        )
    if sec["skipped"]:
        lines.append(f"\nSkipped (budget): {', '.join(sec['skipped'])}")
    return lines + [""]
