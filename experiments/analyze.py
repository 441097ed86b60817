"""Post-hoc analysis of trained runs: train-N vs eval-N, and consolidation diagnostics.

    python -m experiments.analyze --eval_passes=1,2,4,8 --out=results/analysis \
        --runs='runs/main/runs/base,seed=*' --runs='runs/main/runs/passes=?,seed=*'

For every run directory matched by a --runs glob (one glob per flag: run names hold commas)
of finished `experiments.train` workdirs it loads
the latest params, rebuilds the task from config.json and, on the run's held-out set:
  * evaluates at every N in --eval_passes (the model was trained at one N);
  * runs `diagnostics.memory_conditions` (no sleep / trained N / no memory / wrong memory)
    and flags depths where consolidation scores below no memory;
  * measures how well the fast weights alone recall each evicted window, per pass
    (`diagnostics.recall_of_evicted_window`) and plots it for each run.
Writes <out>/analysis.md, <out>/analysis.json and one <out>/<run>_consolidation.png per run.
"""

from __future__ import annotations

import glob
import json
import os

import jax.numpy as jnp
from absl import app, flags, logging

import sleep_consolidation as sc
from experiments import plots
from experiments.configs import common
from sleep_consolidation.analysis import diagnostics

_RUNS = flags.DEFINE_multi_string(
    "runs",
    None,
    "a run workdir or glob; repeat the flag for more (run names hold commas, "
    "so one flag is one glob)",
)
_EVAL_PASSES = flags.DEFINE_list("eval_passes", ["1", "2", "4", "8"], "N values to evaluate at")
_OUT = flags.DEFINE_string("out", None, "output directory")
_SIZE = flags.DEFINE_integer("size", 512, "held-out examples per evaluation")
_DIAG_SIZE = flags.DEFINE_integer("diag_size", 256, "examples for the diagnostics")
flags.mark_flags_as_required(["runs", "out"])


def analyze_run(run_dir: str, eval_passes: list[int], size: int, diag_size: int, out: str) -> dict:
    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)
    spec = common.resolve_saved(saved["config"])
    seed, trained_n = saved["config"]["seed"], saved["config"]["passes"]
    params = sc.load_params(run_dir)
    task = spec.task
    batch = task.eval_batch(seed, size)
    by_n = {
        n: sc.evaluate(params, task, batch, window=spec.window, passes=n, schedule=spec.schedule)
        for n in eval_passes
    }
    small = batch[:diag_size]
    conditions, flags_ = diagnostics.memory_conditions(
        params, small, task.depths, spec.window, trained_n, schedule=spec.schedule
    )
    tokens = jnp.asarray(small.tokens)
    full = (tokens.shape[1] // spec.window) * spec.window
    recall = diagnostics.recall_of_evicted_window(
        params, tokens[:, :full], spec.window, max(trained_n, 4), schedule=spec.schedule
    )
    # A short label (sweep run names spell out every changed field): the task's depth knob,
    # the trained N and the seed.
    knob = getattr(task, "depth_knob", None)
    depth = "" if knob is None else f"{knob}={'-'.join(map(str, getattr(task, knob)))},"
    name = f"{task.name},{depth}N={trained_n},seed={seed}"
    plots.plot_consolidation(recall, os.path.join(out, f"{name}_consolidation.png"))
    return {
        "run": name,
        "run_dir": run_dir,
        "trained_n": trained_n,
        "eval_by_n": by_n,
        "conditions": conditions,
        "flags": flags_,
        "recall_cosine_after_pass": [float(x) for x in recall["cosine"][0].mean(-1)],
    }


def _table(results: list[dict], depths_key: str = "acc") -> str:
    ns = sorted({n for r in results for n in r["eval_by_n"]})
    lines = [
        "**Accuracy (all depths) when evaluated at N (rows: trained N, seed)**",
        "",
        "| run | trained N | " + " | ".join(f"eval N={n}" for n in ns) + " |",
        "|---|---|" + "---|" * len(ns),
    ]
    for r in results:
        cells = [f"{r['eval_by_n'][n][depths_key]:.3f}" for n in ns]
        lines.append(f"| {r['run']} | {r['trained_n']} | " + " | ".join(cells) + " |")
    conds = ["no_sleep", "trained_N", "no_memory", "wrong_memory"]
    lines += [
        "",
        "**Memory conditions (accuracy, all depths; diagnostics.memory_conditions)**",
        "",
        "| run | " + " | ".join(conds) + " | flags |",
        "|---|" + "---|" * (len(conds) + 1),
    ]
    for r in results:
        cells = [f"{r['conditions'][c]['acc']:.3f}" for c in conds]
        lines.append(f"| {r['run']} | " + " | ".join(cells) + f" | {len(r['flags'])} |")
    lines += [
        "",
        "**Recall of the evicted window by the fast weights alone (cosine of S^T k_t "
        "and v_t, first window, mean over layers) after pass p = 1..**",
        "",
        "| run | cosine after each pass |",
        "|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['run']} | " + " ".join(f"{c:.3f}" for c in r["recall_cosine_after_pass"]) + " |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    run_dirs = sorted({d for g in _RUNS.value for d in glob.glob(g) if os.path.isdir(d)})
    if not run_dirs:
        raise SystemExit(f"no run directories match {_RUNS.value!r}")
    eval_passes = [int(x) for x in _EVAL_PASSES.value]
    os.makedirs(_OUT.value, exist_ok=True)
    results = []
    for d in run_dirs:
        print(f"analyzing {d}", flush=True)
        results.append(analyze_run(d, eval_passes, _SIZE.value, _DIAG_SIZE.value, _OUT.value))
    with open(os.path.join(_OUT.value, "analysis.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = _table(results)
    with open(os.path.join(_OUT.value, "analysis.md"), "w") as f:
        f.write(f"# Analysis of {' '.join(_RUNS.value)}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
