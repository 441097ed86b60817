"""The GPU check's train part: the paper-size Rule 110 config
(`experiments/configs/rule110.py`, default variant) built as `python -m experiments.train`
builds it (`resolve_config` + `train_step_from_config`): step time, tokens/s, model FLOP/s,
MFU against the bf16 and f32 peaks, XLA's temp bytes and the device's peak bytes in use,
each row in its own process on an accelerator (so the peaks do not mix)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

import sleep_consolidation as sc
from experiments.bench import flops, measure
from experiments.configs import rule110

# Not in the public namespace: the config dict with every field filled, the optimizer and
# the step exactly as the CLI builds them.
from sleep_consolidation.training.optimizers import optimizer_from_config
from sleep_consolidation.training.run_config import config_to_dict
from sleep_consolidation.training.train_step import train_step_from_config

PEAK_BF16_TFLOPS = 989.0  # H100 / H200 SXM dense bf16
# f32 matmuls at JAX's default precision run on TF32 tensor cores, so the f32 rows are
# measured against the TF32 peak, not f32's 67 TFLOP/s without tensor cores (which
# overstated them: BUILD_NOTES.md "The GPU check, run").
PEAK_TF32_TFLOPS = 494.7  # H100 / H200 SXM dense TF32
ENTRY = "experiments.gpu_check"  # the module a child process runs for one row


def rule110_config(tiny: bool) -> dict:
    c = config_to_dict(rule110.get_config("tiny" if tiny else None))
    if tiny:  # rule110:tiny, smaller still: its compile time is most of the CPU mode's
        c.update(batch_size=8, layout=("ssm",), optimizer="adamw")
    return c


def rows_spec(tiny: bool, train_passes) -> list[tuple[int, str, str]]:
    """(N, remat, compute_dtype) of each train row: the config as it is in float32 and in
    bfloat16, then N in `train_passes` with remat=pass in both dtypes."""
    if tiny:  # compiling the step is most of the CPU mode's time: one N, both dtypes
        return [(1, "pass", "float32"), (1, "pass", "bfloat16")]
    c = rule110_config(tiny)
    points = [(c["passes"], c["remat"])]  # the config as it is (the default row)
    points += [(int(n), "pass") for n in train_passes if (int(n), "pass") not in points]
    return [(n, remat, dtype) for n, remat in points for dtype in ("float32", "bfloat16")]


def compile_step(c: dict):
    """The step of config dict `c` compiled for its first batch, with XLA's memory figures.
    Returns (spec, compiled, state, batch, compile seconds, memory dict or None)."""
    spec = sc.resolve_config(c)
    tx = optimizer_from_config(c)
    step = train_step_from_config(c, spec, tx)
    dev = jax.local_devices()[0]
    params = sc.init_params(spec.model_config, jax.random.key(c["seed"]))
    state = jax.device_put(sc.init_train_state(params, tx), dev)
    batch = jax.device_put(spec.task.batch(c["seed"], 0, c["batch_size"]), dev)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = None
    try:
        m = compiled.memory_analysis()
        mem = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("temp", "argument", "output")}
    except Exception:  # noqa: BLE001
        pass
    return spec, compiled, state, batch, compile_s, mem


def _time_steps(compiled, state, batch, reps: int):
    """One warm-up step, then `reps` timed ones; returns (seconds per step, last metrics)."""
    state, metrics = compiled(state, batch)  # warm-up; the state is donated on accelerators
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    return times, metrics


def train_row(tiny: bool, passes: int, remat: str, reps: int, dtype: str = "float32") -> dict:
    """One train step of the Rule 110 config (as experiments.train builds it) at (N, remat)
    with `compute_dtype=dtype`."""
    c = rule110_config(tiny)
    c["passes"], c["remat"] = passes, remat
    c["compute_dtype"] = None if dtype == "float32" else dtype
    spec, compiled, state, batch, compile_s, mem = compile_step(c)
    times, metrics = _time_steps(compiled, state, batch, reps)
    med = float(np.median(times))
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    peak = None if not stats else stats.get("peak_bytes_in_use")
    tokens = c["batch_size"] * spec.task.seq_len
    fl = flops.model_flops_per_step(c, spec)
    cfg = spec.model_config
    return {
        "N": passes, "remat": remat, "compute_dtype": dtype, "batch_size": c["batch_size"],
        "seq_len": spec.task.seq_len, "window": spec.window, "microbatches": c["microbatches"],
        "d_model": cfg.d_model, "layout": list(cfg.layout), "impl": cfg.impl,
        "chunk_size": cfg.chunk_size, "compile_s": compile_s, "median_s": med,
        "min_s": min(times), "max_s": max(times), "reps": reps, "tokens_per_s": tokens / med,
        "model_tflops_per_step": fl / 1e12, "model_tflops_per_s": fl / med / 1e12,
        "mfu_bf16": fl / med / (PEAK_BF16_TFLOPS * 1e12),
        "mfu_tf32": fl / med / (PEAK_TF32_TFLOPS * 1e12),
        "temp_bytes": None if mem is None else mem["temp"],
        "argument_bytes": None if mem is None else mem["argument"],
        "peak_bytes_in_use": peak, "loss": float(metrics["loss"]),
    }  # fmt: skip


def run(opts, deadline: float, isolate: bool, log=print, progress=None) -> dict:
    """Every row of `rows_spec` (in a child process each if `isolate`) until `deadline`;
    a row that fails (e.g. out of memory) is listed under "skipped" and the others go on.
    `opts` is a `gpu_suite.Options`; `progress` gets the part so far after each row."""
    rows, skipped = [], []
    sec = {"config": "experiments/configs/rule110.py" + (":tiny" if opts.tiny else ""),
           "peaks_tflops": {"bf16": PEAK_BF16_TFLOPS, "tf32": PEAK_TF32_TFLOPS},
           "isolated_processes": isolate, "rows": rows, "skipped": skipped}  # fmt: skip
    reps = 3 if opts.tiny else opts.reps
    for passes, remat, dtype in rows_spec(opts.tiny, opts.train_passes):
        left = deadline - time.perf_counter()
        what = f"N={passes} remat={remat} {dtype}"
        if left <= 0:
            skipped.append(f"{what}: out of budget")
            continue
        try:
            if isolate:
                row = _child(opts, passes, remat, dtype, timeout=max(left, 30.0))
            else:
                row = train_row(opts.tiny, passes, remat, reps, dtype)
        except Exception as e:  # noqa: BLE001 - one row failing (e.g. OOM) keeps the others
            skipped.append(f"{what}: {type(e).__name__}: {str(e)[:300]}")
            log(f"[train] {what} failed: {e}")
            continue
        rows.append(row)
        if progress is not None:
            progress(sec)
        log(f"[train] {what}: {row['tokens_per_s']:.0f} tokens/s, "
            f"MFU {100 * row['mfu_bf16']:.2f}% (bf16 peak), temp {mib(row['temp_bytes'])} "
            f"MiB, peak {mib(row['peak_bytes_in_use'])} MiB")  # fmt: skip
    return sec


def _child(opts, passes, remat, dtype, timeout):
    path = os.path.join(opts.out, f".train_row_N{passes}_{remat}_{dtype}.json")
    cmd = [sys.executable, "-m", ENTRY, f"--child_row={passes}:{remat}:{dtype}",
           f"--child_json={path}", f"--reps={opts.reps}", f"--out={opts.out}"]  # fmt: skip
    if opts.tiny:
        cmd.append("--tiny")
    proc = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child exited {proc.returncode}: {proc.stderr[-1500:]}")
    with open(path) as f:
        row = json.load(f)
    os.remove(path)
    return row


def child_row(opts, row: str, path: str) -> None:
    """A child process's whole job: the train row 'N:remat:compute_dtype', as JSON at `path`."""
    n, remat, dtype = row.split(":")
    out = train_row(opts.tiny, int(n), remat, 3 if opts.tiny else opts.reps, dtype)
    with open(path, "w") as f:
        json.dump(out, f)


def mib(b) -> str:
    """Bytes as whole MiB, '-' when unknown."""
    return "-" if b is None else f"{b / 2**20:.0f}"


def markdown(sec: dict) -> list[str]:
    lines = [f"## Train step: {sec['config']} (built as experiments.train builds it)", "",
             f"MFU = model FLOPs (bench/flops.py model_flops_per_step) / time / peak; "
             f"peaks {sec['peaks_tflops']['bf16']} TFLOP/s (dense bf16) and "
             f"{sec['peaks_tflops']['tf32']} TFLOP/s (dense TF32, what f32 matmuls run on at "
             "JAX's default precision). Peak bytes: "
             "the device's peak_bytes_in_use"
             + (" (one process per row)." if sec["isolated_processes"] else "."), "",
             "| N | remat | compute | batch x T | ms (min-max) | tokens/s | "
             "model TFLOP/s | MFU bf16 | MFU tf32 | temp MiB | peak MiB | compile s | "
             "loss |",
             "|" + "---|" * 13]  # fmt: skip
    for r in sec["rows"]:
        lines.append(
            f"| {r['N']} | {r['remat']} | {r.get('compute_dtype', 'float32')} | "
            f"{r['batch_size']} x {r['seq_len']} | {measure.ms_range(r)} | "
            f"{r['tokens_per_s']:.4g} | {r['model_tflops_per_s']:.3g} | "
            f"{100 * r['mfu_bf16']:.2f}% | {100 * r['mfu_tf32']:.1f}% | "
            f"{mib(r['temp_bytes'])} | {mib(r['peak_bytes_in_use'])} | "
            f"{r['compile_s']:.1f} | {r['loss']:.3f} |"
        )
    if sec["skipped"]:
        lines += ["", "Skipped: " + "; ".join(sec["skipped"])]
    return lines + [""]
