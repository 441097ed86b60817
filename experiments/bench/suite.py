"""The CPU benchmark (`python -m experiments.benchmark`): problem sizes per mode, the
section runner and its report (JSON + markdown), against the targets of
docs/performance.md."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from experiments.bench import ceiling, latency, measure, research, sleep, targets, training, wake

SECTIONS = ("ceiling", "wake", "latency", "sleep", "train", "research")

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


# Each section's run as (preset, reps, ceiling GFLOP/s or None, log) -> its results.
_RUNS: dict[str, Callable[..., dict]] = {
    "ceiling": lambda p, reps, ceil, log: ceiling.run(p, reps),
    "wake": lambda p, reps, ceil, log: wake.run(p, reps),
    "latency": lambda p, reps, ceil, log: latency.run(p, reps),
    "sleep": lambda p, reps, ceil, log: sleep.run(p, reps, ceil),
    "train": lambda p, reps, ceil, log: training.run(p, reps),
    "research": lambda p, reps, ceil, log: research.run(p, reps, ceil, log),
}


def run(
    mode: str = "quick",
    sections=SECTIONS,
    reps: int | None = None,
    log=print,
    command: str = "experiments.bench.suite.run()",
) -> dict:
    """Runs the benchmark sections at `mode` sizes (in SECTIONS order); returns the results
    dict: "meta", "preset", "reps", one entry per section and "targets"."""
    if mode not in PRESETS:
        raise ValueError(f"mode must be one of {tuple(PRESETS)}, got {mode!r}")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {SECTIONS}")
    p = PRESETS[mode]
    reps = p["reps"] if reps is None else reps
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    meta = measure.meta(mode, command)
    res: dict[str, Any] = {"meta": meta, "preset": measure.jsonable(p), "reps": reps}
    t_all = time.perf_counter()
    ceil = None
    for sec in SECTIONS:
        if sec not in sections:
            continue
        t0 = time.perf_counter()
        res[sec] = _RUNS[sec](p, reps, ceil, log)
        if sec == "ceiling":
            ceil = res[sec]["gflops"]
        res[sec]["seconds"] = time.perf_counter() - t0
        log(f"[benchmark] {sec}: {res[sec]['seconds']:.1f}s")
    res["targets"] = targets.evaluate(res)
    res["meta"]["seconds"] = time.perf_counter() - t_all
    return res


def to_markdown(res: dict) -> str:
    """The report: a header line, the targets table, then each section's part."""
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
    lines += targets.markdown(res["targets"])
    parts = {
        "ceiling": ceiling.markdown,
        "wake": wake.markdown,
        "latency": latency.markdown,
        "sleep": sleep.markdown,
        "train": training.markdown,
        "research": lambda sec: [""] + research.markdown(sec, res.get("ceiling", {}).get("gflops")),
    }
    for sec, part in parts.items():
        if sec in res:
            lines += part(res[sec])
    return "\n".join(lines) + "\n"


def write(res: dict, out: str, md: str | None = None) -> tuple[str, str]:
    """Writes the JSON to `out` and the markdown to `md` (default: `out` with .md)."""
    md = md or os.path.splitext(out)[0] + ".md"
    measure.makedirs_for(out, md)
    with open(out, "w") as f:
        json.dump(measure.jsonable(res), f, indent=1)
        f.write("\n")
    with open(md, "w") as f:
        f.write(to_markdown(res))
    return out, md
