"""The capacity map: recall after eviction over the load n / d_k x N, at
convergence, beside the no-learning reference, plus the adaptive-sleep comparison.

    python -m experiments.sweep --sweep=experiments/configs/sweeps.py:capacity_map \
        --workdir=runs/capacity/capacity_map --runs_dir=runs/capacity/runs
    python -m experiments.capacity_map --runs_dir=runs/capacity/runs --out=results/capacity_map

Reads every finished run under --runs_dir (config.json + summary.json of
`experiments.train`), and writes to --out:
  * table.md / capacity_map.json: per (n, N) the converged accuracy over seeds, the paired
    gain over N = 1 with a 95% paired t-interval and sign counts, and which runs hit the
    step cap (flagged †);
  * the no-learning reference (`sleep_consolidation.analysis.capacity`): N plain delta-rule sweeps
    (beta = 1) over n random unit keys in R^16, and over the trained models' own keys and
    values (the first ssm block's, per head, at the value tokens of the evicted window);
  * capacity_map.png: heatmaps of the converged accuracy, the paired gain and both
    references;
  * adaptive.md: on the hardest loads, each model evaluated with adaptive sleep
    (`sleep_consolidation.adaptive_sleep`, a threshold eps per pass, up to --max_passes)
    against fixed N, at matched average passes.
Run directories are not kept between machines (checkpoints are never committed): with
--previous=results/capacity_map/capacity_map.json,results/capacity_map/adaptive.json an
extended map keeps the earlier runs' records (a run on disk wins over its earlier record),
their trained-key reference and their adaptive results.
The library computes; this script only orchestrates, tabulates and plots.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

import sleep_consolidation as sc
from experiments import capacity_report as report
from experiments.capacity_report import D_K, REF_PASSES
from experiments.configs import common
from sleep_consolidation.analysis import adaptive, capacity

_RUNS_DIR = flags.DEFINE_list(
    "runs_dir", None, "directories holding the sweeps' run dirs (comma-separated)"
)
_OUT = flags.DEFINE_string("out", None, "output directory")
_REF_DRAWS = flags.DEFINE_integer("ref_draws", 512, "random key sets per no-learning point")
_REF_SIZE = flags.DEFINE_integer("ref_size", 128, "examples for the trained-key reference")
_ADAPTIVE_SIZE = flags.DEFINE_integer("adaptive_size", 256, "held-out examples per eval")
_ADAPTIVE_LOADS = flags.DEFINE_list("adaptive_loads", ["16", "32"], "loads n to compare on")
_ADAPTIVE_TRAIN_N = flags.DEFINE_list(
    "adaptive_train_passes", ["4"], "compare on the models trained at these N (sleep in training)"
)
_EPS = flags.DEFINE_list("eps", ["0", "0.001", "0.01", "0.03"], "adaptive thresholds")
_MAX_PASSES = flags.DEFINE_integer("max_passes", 8, "adaptive N_max (and fixed N up to it)")
_PREVIOUS = flags.DEFINE_list(
    "previous",
    [],
    "earlier reports' JSON (capacity_map.json, adaptive.json): their records of runs not "
    "under --runs_dir join the map, and their trained-key reference and adaptive results "
    "stand for what cannot be recomputed without those runs",
)
flags.mark_flags_as_required(["runs_dir", "out"])


def random_reference(loads, passes, draws: int, d: int = D_K) -> dict:
    """No-learning accuracy of N plain delta sweeps over n random unit keys in R^d (values
    from a 64-entry random codebook, as the task's 64 value tokens), mean over draws."""
    out = {}
    for n in loads:
        keys = jax.random.split(jax.random.key(n), draws)
        draw = functools.partial(capacity.random_reference, n=n, d=d, max_passes=max(passes))
        curve = jax.vmap(lambda k, draw=draw: draw(k)["accuracy"])(keys)
        out[n] = {N: float(jnp.mean(curve[:, N - 1])) for N in passes}
    return out


def _spec_and_params(run_dir: str):
    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)["config"]
    return common.resolve_saved(saved), sc.load_params(run_dir), saved["seed"]


@functools.partial(jax.jit, static_argnames=("window", "schedule"))
def _full_window_state(params, tokens, window: int, schedule):
    """The streaming state with the first window read by the wake pass (full, not slept)."""
    state = sc.init_state(
        params.config, batch_size=tokens.shape[0], window=window, schedule=schedule
    )
    state, _ = jax.lax.scan(lambda s, t: (sc.wake_step(params, s, t)[0], None), state, tokens.T)
    return state


def trained_reference(run_dir: str, passes, size: int) -> dict:
    """No-learning accuracy of N plain delta sweeps (beta = 1) over the trained model's own
    keys and values: the first ssm block's, per head, at the window's n value tokens (where
    the short conv lets a value token's key carry the key before it). Exact = the nearest
    of the window's n values (by cosine) holds the same value token."""
    spec, params, seed = _spec_and_params(run_dir)
    task, W = spec.task, spec.window
    n = task.num_pairs_values[0]
    batch = task.eval_batch(seed, size)
    tokens = jnp.asarray(batch.tokens[:, :W])
    state = _full_window_state(params, tokens, W, spec.schedule)
    k, v = next(iter(adaptive.window_keys_values(params, state).values()))  # [B, W, H, dh]
    val_pos = jnp.arange(W - 2 * n + 1, W, 2)  # the n value tokens of the first window
    k, v, ids = k[:, val_pos], v[:, val_pos], tokens[:, val_pos]
    B, _, H, _ = k.shape

    def one(kk, vv, tok):  # kk, vv [n, dh] of one example and head
        kk = kk / jnp.maximum(jnp.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)
        curve = capacity.recall_by_passes(
            kk, vv, max(passes), codebook=vv, value_ids=jnp.arange(n), codebook_labels=tok
        )
        return curve["accuracy"], curve["mean_cosine"]

    kh, vh = (
        k.transpose(0, 2, 1, 3).reshape(B * H, n, -1),
        v.transpose(0, 2, 1, 3).reshape(B * H, n, -1),
    )
    acc, cos = jax.vmap(one)(kh, vh, jnp.repeat(ids, H, axis=0))
    return {
        N: {"acc": float(jnp.mean(acc[:, N - 1])), "cos": float(jnp.mean(cos[:, N - 1]))}
        for N in passes
    }


def _accuracy(logits, batch) -> float:
    hit = (jnp.argmax(logits, -1) == jnp.asarray(batch.targets)) * jnp.asarray(batch.loss_mask)
    return float(jnp.sum(hit) / jnp.sum(jnp.asarray(batch.loss_mask)))


def adaptive_vs_fixed(run_dir: str, eps_values, max_passes: int, size: int) -> dict:
    """The model's accuracy with adaptive sleep after its first window (per eps: accuracy
    and mean N) and with fixed N = 1..max_passes, on the same held-out examples."""
    spec, params, seed = _spec_and_params(run_dir)
    task, W, sched = spec.task, spec.window, spec.schedule
    batch = task.eval_batch(seed, size)
    tokens = jnp.asarray(batch.tokens)
    fixed = {}
    for N in range(1, max_passes + 1):
        state = sc.init_state(params.config, batch_size=size, window=W, schedule=sched)
        _, logits = sc.stream(params, state, tokens, N)
        fixed[N] = _accuracy(logits, batch)
    out = {"fixed": fixed, "adaptive": {}}
    for eps in eps_values:
        state = _full_window_state(params, tokens[:, :W], W, sched)
        state, n_used = adaptive.adaptive_sleep(params, state, eps, max_passes)
        state = sc.evict(state)
        _, logits = sc.stream(params, state, tokens[:, W:], 1)
        out["adaptive"][eps] = {
            "acc": _accuracy(logits, _tail(batch, W)),
            "mean_N": float(jnp.mean(n_used)),
        }
    return out


def _tail(batch, W):
    """The batch's second window (the queries), every field cut at position W."""
    return jax.tree_util.tree_map(lambda x: x[:, W:], batch)


def main(_):
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    out = _OUT.value
    os.makedirs(out, exist_ok=True)
    previous = report.load_previous(_PREVIOUS.value)  # read first: a bad file fails early
    on_disk = [r for d in _RUNS_DIR.value for r in report.collect(d)]
    records = report.merge_records(on_disk, previous["records"])
    if not records:
        raise SystemExit(f"no finished one-load runs under {_RUNS_DIR.value}")
    cells = report.grid_stats(records)
    loads = sorted({n for n, _ in cells})
    rand_ref = random_reference(loads, REF_PASSES, _REF_DRAWS.value)
    # Both heads' key dimensions as one memory: what a model could reach by splitting the
    # pairs over its 2 heads (an upper bound the per-head reference does not show).
    rand_ref_2h = random_reference(loads, REF_PASSES, _REF_DRAWS.value, d=2 * D_K)
    trained_ref = {}
    for n in loads:  # the N=1 models' keys: what one wake pass writes, before any sleep
        runs = [r for r in on_disk if r["n"] == n and r["N"] == 1]
        if not runs and n in previous["trained_reference"]:
            trained_ref[n] = previous["trained_reference"][n]  # its models are not on disk
        elif runs:
            per_run = [trained_reference(r["dir"], REF_PASSES, _REF_SIZE.value) for r in runs]
            trained_ref[n] = {
                N: {k: float(np.mean([p[N][k] for p in per_run])) for k in ("acc", "cos")}
                for N in REF_PASSES
            }
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(report.tables(cells, rand_ref, trained_ref, rand_ref_2h))
    report.plot(cells, rand_ref, trained_ref, os.path.join(out, "capacity_map.png"))
    adaptive_results = dict(previous["adaptive"])
    for r in on_disk:
        if str(r["n"]) in _ADAPTIVE_LOADS.value and str(r["N"]) in _ADAPTIVE_TRAIN_N.value:
            name = f"n={r['n']},N={r['N']},seed={r['seed']}"
            adaptive_results[name] = adaptive_vs_fixed(
                r["dir"], [float(e) for e in _EPS.value], _MAX_PASSES.value, _ADAPTIVE_SIZE.value
            )
    if adaptive_results:
        with open(os.path.join(out, "adaptive.md"), "w") as f:
            f.write(report.adaptive_table(adaptive_results))
    with open(os.path.join(out, "capacity_map.json"), "w") as f:
        json.dump(
            {
                "records": records,
                "random_reference": rand_ref,
                "random_reference_2_heads": rand_ref_2h,
                "trained_reference": trained_ref,
                "adaptive": adaptive_results,
                "cells": [{k: v for k, v in c.items()} for c in cells.values()],
            },
            f,
            indent=1,
            default=str,
        )
    print(open(os.path.join(out, "table.md")).read())


if __name__ == "__main__":
    app.run(main)
