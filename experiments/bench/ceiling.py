"""The ceiling section: f32 matmul GFLOP/s for square n x n products, the roof every
fraction is reported against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.bench import measure


def run(p: dict, reps: int) -> dict:
    """Rows per n in p["ceiling_n"]; "gflops": the best of them."""
    rows = []
    for n in p["ceiling_n"]:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        mm, _ = measure.compile_fn(jnp.matmul, a, b)
        t = measure.time_interleaved({"mm": lambda mm=mm, a=a, b=b: mm(a, b)}, reps)["mm"]
        rows.append({"n": n, **t, "gflops": 2 * n**3 / t["median_s"] / 1e9})
    return {"rows": rows, "gflops": max(r["gflops"] for r in rows)}


def markdown(sec: dict) -> list[str]:
    lines = ["", f"## f32 matmul ceiling: {sec['gflops']:.0f} GFLOP/s", ""]
    return lines + measure.table(
        ["n", "ms", "GFLOP/s"],
        [(r["n"], measure.ms_range(r), f"{r['gflops']:.0f}") for r in sec["rows"]],
    )
