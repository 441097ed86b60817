"""The research-scale section of `experiments/benchmark.py` (BUILD_NOTES.md, "Research-scale
throughput"): the train step that
the CLI runs for the CPU-scale configs, its throughput in tokens/s and model FLOP/s, the
fraction of a one-core matmul that is, and where the step's time goes.

    taskset -c 0 python -m experiments.benchmark --sections=ceiling,research

Per (config, N): the step built exactly as `experiments.train` builds it
(`train_step_from_config`: chunked rule, unrolled short loops, logits at the task's answer
positions, the config's micro-batches) against the reference step (lax.scan everywhere,
logits at every position, one batch), interleaved in one process. Model FLOPs come from
formulas (`bench/flops.py`; XLA's cost analysis counts a loop body once): per token and
pass, 2 x the block matrices' parameters + attention scores and values (2 x 2 x keys x H dh,
keys = causal average) + the rule (6 H dh^2: read, write and readout), over the looped
blocks N times for tokens of consolidated windows and once for the rest; the unembedding
(2 D V) at the answer positions only (the only logits the loss needs); training = 3x that
forward.
The breakdown is `step_profile.profile` (the profiler's op times by library function).
"""

from __future__ import annotations

import contextlib
import time

import jax

from experiments import step_profile
from experiments.bench import measure
from experiments.bench.flops import model_flops_per_step
from experiments.configs import depo, recall, rule110
from sleep_consolidation import model
from sleep_consolidation.layers import loops
from sleep_consolidation.training import optimizers, run_config, train_step

CONFIGS = {
    "recall:capacity": lambda: recall.get_config("capacity"),
    "rule110:cpu": lambda: rule110.get_config("cpu"),
    "depo:cpu": lambda: depo.get_config("cpu"),
    "recall:tiny": lambda: recall.get_config("tiny"),
}


def _step(config, passes: int, reference: bool):
    c = config.to_dict()
    c["passes"] = passes
    if reference:
        c.update(impl="scan", microbatches=1)
    spec = run_config.resolve_config(c)
    tx = optimizers.optimizer_from_config(c)
    positions = None if reference else spec.task.answer_positions
    # The reference traces every loop as a lax.scan (no unrolling).
    with loops.unroll_limit(0) if reference else contextlib.nullcontext():
        step = train_step.make_train_step(
            tx, window=spec.window, passes=passes, schedule=spec.schedule, remat=c["remat"],
            grad_passes=c["grad_passes"], estimator=c["estimator"], seed=c["seed"],
            loss_positions=positions, microbatches=c["microbatches"],
        )  # fmt: skip
        state = train_step.init_train_state(
            model.init_params(spec.model_config, jax.random.key(0)), tx
        )
        batch = spec.task.batch(0, 0, c["batch_size"])
        compiled = step.lower(state, batch).compile()  # compiled under this unroll limit
    return c, spec, compiled, state, batch


def run(p, reps, ceiling_gflops, log=print):
    """Rows of (config, N): tokens/s and model GFLOP/s of the fast and reference steps,
    the fraction of the matmul ceiling, the host/data cost and the profile breakdown."""
    rows = []
    for name, passes_list in p["research"]:
        for passes in passes_list:
            c, spec, fast, state, batch = _step(CONFIGS[name](), passes, reference=False)
            _, _, ref, ref_state, _ = _step(CONFIGS[name](), passes, reference=True)
            calls = {
                "fast": lambda f=fast, s=state, b=batch: f(s, b),
                "reference": lambda f=ref, s=ref_state, b=batch: f(s, b),
            }
            t = measure.time_interleaved(calls, reps)
            tokens = c["batch_size"] * spec.task.seq_len
            flops = model_flops_per_step(c, spec)
            t0 = time.perf_counter()
            for i in range(reps):
                jax.block_until_ready(jax.device_put(spec.task.batch(0, i + 1, c["batch_size"])))
            host_s = (time.perf_counter() - t0) / reps
            prof = step_profile.profile(fast, (state, batch), steps=max(2, reps // 2))
            op_total = sum(prof["by_category_ms"].values()) or float("nan")
            shares = {k: v / op_total for k, v in prof["by_category_ms"].items()}
            fast_s, ref_s = t["fast"]["median_s"], t["reference"]["median_s"]
            row = {
                "config": name,
                "N": passes,
                "microbatches": c["microbatches"],
                "tokens_per_step": tokens,
                "fast_ms": 1e3 * fast_s,
                "fast_min_ms": 1e3 * t["fast"]["min_s"],
                "fast_max_ms": 1e3 * t["fast"]["max_s"],
                "reference_ms": 1e3 * ref_s,
                "speedup": ref_s / fast_s,
                "tokens_per_s": tokens / fast_s,
                "reference_tokens_per_s": tokens / ref_s,
                "model_gflops_per_step": flops / 1e9,
                "model_gflops_per_s": flops / fast_s / 1e9,
                "of_ceiling": None if not ceiling_gflops else flops / fast_s / 1e9 / ceiling_gflops,
                "host_data_ms": 1e3 * host_s,
                "ops_per_step": prof["ops_per_call"],
                "shares": shares,
            }
            rows.append(row)
            log(
                f"[research] {name} N={passes}: {row['tokens_per_s']:.0f} tokens/s "
                f"({row['speedup']:.2f}x the reference), "
                f"{row['model_gflops_per_s']:.1f} GFLOP/s"
            )
    return {"rows": rows}


def markdown(sec: dict, ceiling_gflops) -> list[str]:
    """The section's two tables: throughput against the reference, and the time breakdown."""
    cats = step_profile.CATEGORIES
    lines = [
        "## Research-scale train step (what `experiments.train` runs for the CPU configs)",
        "",
        "fast = the library's default step (chunked rule, short loops unrolled, logits at "
        "the answer positions only, the config's micro-batches); reference = lax.scan "
        "everywhere, per-token rule, logits everywhere, one batch. Model FLOPs from formulas "
        f"(bench/research.py docstring); ceiling: {ceiling_gflops and round(ceiling_gflops)} "
        "GFLOP/s (the f32 matmul section, same process).",
        "",
        "| config | N | M | fast ms (min-max) | reference ms | speedup | tokens/s | "
        "model GFLOP/s | of ceiling | host+data ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sec["rows"]:
        frac = "-" if r["of_ceiling"] is None else f"{100 * r['of_ceiling']:.1f}%"
        lines.append(
            f"| {r['config']} | {r['N']} | {r['microbatches']} | {r['fast_ms']:.1f} "
            f"({r['fast_min_ms']:.1f}-{r['fast_max_ms']:.1f}) | {r['reference_ms']:.1f} | "
            f"{r['speedup']:.2f}x | {r['tokens_per_s']:.0f} | {r['model_gflops_per_s']:.1f} | "
            f"{frac} | {r['host_data_ms']:.2f} |"
        )
    lines += [
        "",
        "Where the fast step's time goes (share of the profiler's op time; `step_profile.py`):",
        "",
        "| config | N | ops/step | " + " | ".join(cats) + " |",
        "|---|---|---|" + "---|" * len(cats),
    ]
    for r in sec["rows"]:
        shares = " | ".join(f"{100 * r['shares'][k]:.0f}%" for k in cats)
        lines.append(f"| {r['config']} | {r['N']} | {r['ops_per_step']:.0f} | {shares} |")
    return lines + [""]
