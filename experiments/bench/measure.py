"""How the benchmarks measure and record: AOT compilation, interleaved timing, XLA's
temporary memory, errors between outputs, the machine's metadata, JSON-safe values and
markdown tables.

Timing: every program is compiled first (`jit(...).lower(...).compile()`), warmed up, then
the variants of one comparison are run interleaved, `jax.block_until_ready` on the whole
output; we report median, min and max. Ratios are taken between medians of one process.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

# --- timing and memory -----------------------------------------------------------------------


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


# --- comparisons ---------------------------------------------------------------------------------


def ratio(a, b):
    """a / b, or None when either is missing or zero."""
    return None if not a or not b else a / b


def errors(a, b) -> dict[str, float]:
    """Max abs error of `a` against `b`, and that over max |b| (in float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.max(np.abs(a - b))
    return {"max_abs": float(diff), "max_rel": float(diff / max(np.max(np.abs(b)), 1e-30))}


def rel_err(a, b) -> float:
    return errors(a, b)["max_rel"]


# --- metadata and JSON -------------------------------------------------------------------------


def meta(mode: str, command: str) -> dict:
    """The run's machine and software: JAX, backend, device, CPU model and count, Python."""
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


def jsonable(x):
    """`x` with tuples as lists and numpy scalars as Python numbers."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def makedirs_for(*paths: str) -> None:
    """Creates the directories the files `paths` go into."""
    for path in paths:
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)


# --- markdown ------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table: a header line, a rule line, one line per row (cells str()-ed)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def ms(s: float) -> str:
    """Seconds as milliseconds, 3 significant digits."""
    return f"{1e3 * s:.3g}"


def ms_range(r: dict) -> str:
    """A timing's median (min-max) in ms."""
    return f"{ms(r['median_s'])} ({ms(r['min_s'])}-{ms(r['max_s'])})"


def cfgline(cfg: dict) -> str:
    """A config dict as 'k=v, k=v'."""
    return ", ".join(f"{k}={v}" for k, v in cfg.items())
