"""Memory and time of one training step at every point of a sweep (no training).

    python -m experiments.step_memory --sweep=experiments/configs/sweeps.py:truncation

For each point of the sweep (seed 0), builds the point's config exactly as the sweep
would, compiles its `train_step` and prints XLA's peak temporary memory for it
(`memory_analysis().temp_size_in_bytes`, the activations kept for the backward pass) and
the median wall time of a few steps, all in this one process so the ratios are side by
side. Used for the truncated-vs-full-gradient comparison (quality comes from the sweep).
"""

from __future__ import annotations

import statistics
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments.sweeping import grid
from sleep_consolidation.model import init_params
from sleep_consolidation.training import optimizers, run_config, train_step

_SWEEP = config_flags.DEFINE_config_file("sweep", None, "sweep file (as for experiments.sweep)")
_REPS = flags.DEFINE_integer(
    "reps", 5, "timed steps per point (after one warm-up step); 0: memory only"
)
flags.mark_flags_as_required(["sweep"])


def step_cost(config, reps: int) -> tuple[float | None, float]:
    """(peak temporary MiB of the compiled train step, median seconds per step)."""
    spec = run_config.resolve_config(config)
    c = run_config.config_to_dict(config)
    tx = optimizers.optimizer_from_config(c)
    step = train_step.train_step_from_config(c, spec, tx)
    state = train_step.init_train_state(init_params(spec.model_config, jax.random.key(0)), tx)
    batch = spec.task.batch(0, 0, c["batch_size"])
    analysis = step.lower(state, batch).compile().memory_analysis()
    mib = None if analysis is None else analysis.temp_size_in_bytes / 2**20
    if reps == 0:
        return mib, float("nan")
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times = []
    for i in range(reps):
        batch = spec.task.batch(0, i + 1, c["batch_size"])
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return mib, statistics.median(times)


def main(argv):
    del argv
    s = _SWEEP.value
    axes, fixed = grid.axes_and_fixed(s)
    base = grid.load_config_file(s.config, s.get("config_arg", ""))
    runs = grid.expand_grid(axes, [0])
    grid.check_fields(base, runs)
    print(f"| point | step temp MiB | step ms | (1 process, {jax.devices()[0].platform}) |")
    print("|---|---|---|---|")
    for run in runs:
        # The config a sweep run of this point trains (the same override flags).
        overrides = grid.override_flags({**fixed, **dict(run.point)})
        config = grid.load_config_file(s.config, s.get("config_arg", ""), overrides)
        mib, sec = step_cost(config, _REPS.value)
        mem = "n/a" if mib is None else f"{mib:.1f}"
        print(f"| {run.point_name} | {mem} | {sec * 1e3:.0f} | |", flush=True)


if __name__ == "__main__":
    app.run(main)
