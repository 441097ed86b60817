"""Meta-learned rule vs the built-in rules: recall accuracy per depth, learned coefficients.

    taskset -c 1 python -m experiments.meta_rule --out=results/meta_rule

Trains `experiments/configs/parametric.py:meta` (rule="parametric", Hebbian init, theta
learned by AdamW at theta_learning_rate) and the same config with each built-in rule, for
each seed: a sweep over `rule` run by the sweep runner (`experiments/sweeping`), so its
flags apply (--launcher=local|slurm|debug, --slurm_*, --dry_run, --on_config_change);
--parallel runs at once (default: one per usable core), sharing a persistent compilation
cache under --runs so that the seeds of one rule share a compile. Writes to --out:
  summary.md  final eval accuracy per depth (mean +- std over seeds) per rule; the learned
              coefficients per head at the end and the nearest built-in point; run times.
  theta.png   the coefficient trajectories of every seed and head during training.
Run workdirs (`rule=<rule>,seed=<s>/`: config.json, metrics.jsonl, theta.jsonl,
checkpoints) go under --runs; a rerun reuses finished runs of the same config.
"""

from __future__ import annotations

import os
import platform
import sys

import jax
import numpy as np
from absl import app, flags

from experiments.configs import parametric as parametric_config
from experiments.sweeping import cli, grid, launch, lock, runner
from experiments.sweeping.rundir import RunDir
from sleep_consolidation.rules import parametric

_OUT = flags.DEFINE_string("out", "results/meta_rule", "Directory of summary.md and theta.png.")
_RUNS = flags.DEFINE_string("runs", "/tmp/meta_rule_runs", "Directory of the run workdirs.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0..n-1 per rule.")
_RULES = flags.DEFINE_list(
    "rules", ["parametric", "gated_delta", "delta", "gated_hebbian", "hebbian"], "Rules to run."
)
_STEPS = flags.DEFINE_integer("steps", None, "Override the config's steps (None: keep).")
_VARIANT = flags.DEFINE_string("variant", "meta", "parametric.py variant (e.g. 'meta,tiny').")
_PARALLEL = flags.DEFINE_integer("parallel", None, "Runs at once (default: the usable cores).")

CONFIG_FILE = "experiments/configs/parametric.py"


def meta_sweep(rules, seeds: int, variant="meta", steps=None, parallel=1) -> grid.Sweep:
    """The sweep over `rule` x seeds 0..seeds-1, runs named rule=<rule>,seed=<s>."""
    fixed = {}
    if steps is not None:
        fixed = {"steps": steps, "checkpoint_every": steps, "eval_every": max(steps // 6, 1)}
    return grid.Sweep(config=CONFIG_FILE, config_arg=variant, axes={"rule": list(rules)},
                      fixed=fixed, seeds=tuple(range(seeds)), parallel=parallel,
                      name_by_changes=False)  # fmt: skip


def by_rule(records) -> dict:
    """{rule: [summary dict per seed, with its "workdir"]} from the sweep's records."""
    out = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        summary = RunDir(r["run_dir"]).summary() or {"eval": r["eval"]}
        out.setdefault(r["overrides"]["rule"], []).append({**summary, "workdir": r["run_dir"]})
    return out


def _eval_at(workdir: str, step: int) -> float | None:
    """eval/acc logged at the eval step nearest to `step`."""
    evals = [m for m in RunDir(workdir).metrics() if "eval/acc" in m]
    if not evals:
        return None
    return min(evals, key=lambda m: abs(m["step"] - step))["eval/acc"]


def _theta_lines(workdir: str) -> list[dict]:
    return RunDir(workdir).theta()


def _ms(xs) -> str:
    xs = np.asarray([x for x in xs if x is not None], np.float64)
    if not len(xs):
        return "-"
    return f"{xs.mean():.3f} ± {xs.std(ddof=1) if len(xs) > 1 else 0.0:.3f}"


def _task_line(c) -> str:
    t = c.task
    if t.name == "recall":
        return (
            f"recall with n in {tuple(t.num_pairs_values)} pairs (depth = n), L={t.window}, "
            f"{t.num_keys} keys / {t.num_values} values"
        )
    knobs = ", ".join(f"{k}={v}" for k, v in t.items() if k != "name")
    return f"{t.name} ({knobs}; depth = the task's depth)"


def write_summary(results: dict, out_dir: str, command: str) -> str:
    """summary.md: the accuracy table, the learned coefficients, the run times."""
    first = next(iter(results.values()))[0]["eval"]
    depths = sorted((k for k in first if k.startswith("acc/d=")), key=lambda k: int(k[6:]))
    c = parametric_config.get_config(_VARIANT.value)
    mid = c.steps // 3
    total_s = sum(s.get("wall_s") or 0.0 for sums in results.values() for s in sums)
    lines = [
        f"# Meta-learned rule vs built-in rules ({c.task.name})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores (one used: taskset -c 1), "
        f"JAX {jax.__version__}; {sum(map(len, results.values()))} runs, "
        f"{total_s / 60:.1f} min of run wall time in total.  ",
        f"Setup: `experiments/configs/parametric.py:{_VARIANT.value}` — {_task_line(c)}; "
        f"d={c.d_model}, "
        f"{c.num_heads} heads, layout {tuple(c.layout)}, N={c.passes}; AdamW "
        f"{c.learning_rate:g} ({c.lr_schedule}), theta at {c.theta_learning_rate:g}; batch "
        f"{c.batch_size}, {c.steps} steps; eval on {c.eval_size} held-out examples. "
        "The built-in rules use the same config with `rule` changed.",
        "",
        "## Final eval accuracy (mean ± std over seeds)",
        "",
        "| rule | seeds | "
        + " | ".join(depths)
        + f" | acc | loss | acc at step {mid} | train s | wall s |",
        "|---|---|" + "---|" * (len(depths) + 5),
    ]
    for rule, sums in results.items():
        cells = [_ms([s["eval"].get(k) for s in sums]) for k in (*depths, "acc", "loss")]
        cells.append(_ms([_eval_at(s["workdir"], mid) for s in sums]))
        times = [np.mean([s.get(k) or 0.0 for s in sums]) for k in ("train_s", "wall_s")]
        lines.append(
            f"| {rule} | {len(sums)} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(f"{t:.0f}" for t in times)
            + " |"
        )
    lines += [
        "",
        "train s: training steps only; wall s: the whole run incl. compilation (the first "
        "seed of a rule compiles, later seeds hit the persistent cache) and eval.",
    ]
    if "parametric" in results:
        lines += [
            "",
            "## Learned coefficients at the end (per seed, layer, head)",
            "",
            "Nearest: the closest built-in point (Euclidean over the five coefficients; "
            "`parametric.describe_theta`). Init: the Hebbian point (0, 1, 0, 0, 1).",
            "",
            "| seed | block | head | " + " | ".join(parametric.COEFFS) + " | nearest (dist) |",
            "|---|---|---|" + "---|" * (len(parametric.COEFFS) + 1),
        ]
        for seed, s in enumerate(results["parametric"]):
            for layer in _theta_lines(s["workdir"])[-1]["layers"]:
                desc = parametric.describe_theta(layer["coefficients"])
                for h, head in enumerate(desc["heads"]):
                    vals = " | ".join(f"{head[k]:+.2f}" for k in parametric.COEFFS)
                    lines.append(
                        f"| {seed} | {layer['block']} | {h} | {vals} | "
                        f"{head['nearest']} ({head['distance']:.2f}) |"
                    )
        lines.append("")
        means = [
            f"seed {seed}: {ly['nearest']} ({ly['distance']:.2f})"
            for seed, s in enumerate(results["parametric"])
            for ly in _theta_lines(s["workdir"])[-1]["layers"]
        ]
        lines.append("Nearest point of the head-mean coefficients: " + "; ".join(means) + ".")
    path = os.path.join(out_dir, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def plot_theta(param_summaries: list, path: str) -> str:
    """theta.png: one panel per coefficient, a line per (seed, layer, head)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coeffs = parametric.COEFFS
    fig, axes = plt.subplots(1, len(coeffs), figsize=(3.2 * len(coeffs), 2.8), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for seed, s in enumerate(param_summaries):
        lines = _theta_lines(s["workdir"])
        steps = [ln["step"] for ln in lines]
        for j, _ in enumerate(lines[0]["layers"]):
            for h in range(len(lines[0]["layers"][j]["coefficients"][coeffs[0]])):
                for ax, cf in zip(axes, coeffs):
                    ys = [ln["layers"][j]["coefficients"][cf][h] for ln in lines]
                    ax.plot(steps, ys, color=colors[seed % len(colors)],
                            ls=("-", "--", ":", "-.")[h % 4], lw=1.2,
                            label=f"seed {seed} head {h}" if cf == coeffs[0] else None)  # fmt: skip
    for ax, cf in zip(axes, coeffs):
        for ref in (0.0, 1.0):
            ax.axhline(ref, color="0.7", lw=0.8, zorder=0)
        ax.set_title(cf)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    parallel = _PARALLEL.value or max(len(launch.available_cores()), 1)
    sweep = meta_sweep(_RULES.value, _SEEDS.value, _VARIANT.value, _STEPS.value, parallel)
    try:
        if cli.DRY_RUN.value:
            planned = runner.plan(sweep, _RUNS.value, cli.ON_CONFIG_CHANGE.value)
            print(runner.describe(planned, parallel))
            return
        records = runner.run_sweep(
            sweep, _RUNS.value, cli.make_launcher(_RUNS.value, parallel), runs_dir=_RUNS.value,
            on_config_change=cli.ON_CONFIG_CHANGE.value, plain_every=cli.PLAIN_EVERY.value,
            train_flags=[f"--compilation_cache_dir={os.path.join(_RUNS.value, 'jax_cache')}"],
        )  # fmt: skip
    except (ValueError, lock.LockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    bad = [os.path.basename(r["run_dir"]) for r in records if r["status"] != "completed"]
    if bad:
        raise SystemExit(f"runs not completed: {bad}")
    results = by_rule(records)
    os.makedirs(_OUT.value, exist_ok=True)
    command = "taskset -c 1 python -m experiments.meta_rule " + " ".join(
        a for a in argv_flags() if not a.startswith("--runs")
    )
    path = write_summary(results, _OUT.value, command.strip())
    if "parametric" in results:
        plot_theta(results["parametric"], os.path.join(_OUT.value, "theta.png"))
    print(open(path).read())


def argv_flags() -> list[str]:
    return [a for a in sys.argv[1:] if a.startswith("--")]


if __name__ == "__main__":
    app.run(main)
