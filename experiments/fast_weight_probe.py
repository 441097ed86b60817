"""Where does a Rule 110 model compute: before the query or at it? Linear probes of the
fast weights that cross the last window boundary (BUILD_NOTES.md "The fast-weight probe").

    python -m experiments.fast_weight_probe --out=results/depth/probe \
        --runs='runs/depth/runs/passes=?,task.t_values=(6),seed=*'

For every finished Rule 110 run matched by --runs (one t per model, probe_radius 0) it draws
--size examples from a held-out stream (the run's seed + --seed_offset), and fits one ridge
probe (`sleep_consolidation.analysis.probe`) per state i from the fast weights after the
last state window's consolidation to
  * the answer Qi asks (bit 0 of state i after t steps), and
  * each raw bit j in {-t..t} of state i (what that answer depends on),
with the same trained weights consolidating with p passes for every p in --passes. Controls:
the weights training began from, at the trained N (the untrained model of the same config
and seed, or a warm-started run's source, whose checkpoints must be there), and the raw
input bits themselves (the answer's linear separability). Writes <out>/probe.md and
<out>/probe.json.
"""

from __future__ import annotations

import glob
import json
import os

import jax
import numpy as np
from absl import app, flags, logging

import sleep_consolidation as sc
from experiments.configs import common
from sleep_consolidation.analysis.probe import fast_weight_features, ridge_probe
from sleep_consolidation.tasks.rule110 import rule110_step
from sleep_consolidation.training import init_from
from sleep_consolidation.training.checkpoint_files import CHECKPOINT_DIR

FLAGS = flags.FLAGS


def define_flags():
    """The command line, defined only when this module runs as a program: the tests import
    it beside other experiment modules whose flags share names (--runs, --out)."""
    flags.DEFINE_multi_string(
        "runs", None, "a finished Rule 110 run workdir or glob; repeat the flag for more "
        "(run names hold commas, so one flag is one glob)",
    )  # fmt: skip
    flags.DEFINE_list("passes", ["1", "2", "4"], "consolidation passes p to probe after")
    flags.DEFINE_integer("size", 4096, "examples drawn per run (fit + held out)")
    flags.DEFINE_integer("test_size", 1024, "held-out examples (the last ones drawn)")
    flags.DEFINE_integer(
        "seed_offset", 1000, "the probe's examples come from eval stream seed + this"
    )
    flags.DEFINE_string("out", None, "output directory")
    flags.DEFINE_bool(
        "report_only", False, "rewrite <out>/probe.md from <out>/probe.json, probing nothing"
    )
    flags.mark_flags_as_required(["out"])


def probe_targets(task, tokens, targets):
    """(answers [B, n], raw bits [B, n, 2t+1]) of a Rule 110 batch with one t, recomputed
    from the state tokens; raises if the answers disagree with the batch's own targets."""
    n, w = task.num_states, task.width
    (t,) = task.t_values
    states = np.asarray(tokens[:, : n * w]).reshape(-1, n, w).astype(np.uint8)
    cells = states
    for _ in range(t):
        cells = rule110_step(cells, task.boundary)
    answers = cells[:, :, 0]
    if not np.array_equal(answers, np.asarray(targets[:, n * w :])):
        raise ValueError("recomputed Rule 110 answers disagree with the batch's targets")
    raw = np.stack([states[:, :, j % w] for j in range(-t, t + 1)], axis=-1)
    return answers, raw


def _check_run(run_dir, spec, saved):
    task = spec.task
    problem = None
    if task.name != "rule110":
        problem = f"task {task.name!r} (the probe is for rule110)"
    elif spec.window != task.width:
        # One state per window, so that the memory probed is the one after state n.
        problem = f"window {spec.window} != width {task.width} (one state per window needed)"
    elif task.boundary != "periodic":
        problem = f"boundary {task.boundary!r} (the raw-bit offsets -t..t wrap: periodic only)"
    elif saved.get("init_from") and not os.path.isdir(
        os.path.join(saved["init_from"], CHECKPOINT_DIR)
    ):  # its control is the weights it began from: the source's, which must be there
        problem = f"init_from {saved['init_from']!r} that has no checkpoints here"
    elif len(task.t_values) != 1:
        problem = f"t_values {task.t_values} (the probe needs one t per model)"
    elif task.probe_radius != 0:
        problem = f"probe_radius {task.probe_radius} (the probe needs queries of bit 0)"
    elif not spec.model_config.ssm_blocks:
        problem = f"layout {spec.model_config.layout} (no fast weights to probe)"
    if problem:
        raise ValueError(f"{run_dir}: cannot probe a run with {problem}")


def _probe_columns(x, answers, raw, n_test):
    """Probe accuracies: answer per state [n], raw bits per state and offset [n, 2t+1]."""
    B, n = answers.shape
    y = np.concatenate([answers, raw.reshape(B, -1)], axis=1).astype(np.float64)
    res = ridge_probe(x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:])
    acc = res["accuracy"]
    return acc[:n], acc[n:].reshape(n, -1), res["majority"][:n]


def checked_run(run_dir: str):
    """(the run's resolved spec, its recorded config), once `_check_run` accepts it."""
    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)["config"]
    spec = common.resolve_saved(saved)
    _check_run(run_dir, spec, saved)
    return spec, saved


def probe_run(run_dir: str, passes: list[int], size: int, n_test: int, seed_offset: int,
              checked=None):  # fmt: skip
    """`checked`: `checked_run(run_dir)`'s result, when the caller has it already."""
    spec, saved = checked or checked_run(run_dir)
    task, seed, trained_n = spec.task, saved["seed"], saved["passes"]
    batch = task.eval_batch(seed + seed_offset, size)
    answers, raw = probe_targets(task, batch.tokens, batch.targets)
    states = batch.tokens[:, : task.num_states * task.width]  # the state windows alone
    params = sc.load_params(run_dir)
    metrics = sc.evaluate(params, task, batch[-n_test:], window=spec.window, passes=trained_n,
                          schedule=spec.schedule)  # fmt: skip
    by_p = {}
    for p in sorted(set(passes) | {trained_n}):
        x = np.asarray(fast_weight_features(params, states, spec.window, p,
                                            schedule=spec.schedule))  # fmt: skip
        ans, bits, majority = _probe_columns(x, answers, raw, n_test)
        by_p[p] = {"answer": ans.tolist(), "raw_bits": bits.tolist()}
    # The control: the weights training began from (a fresh init, or a warm start's source).
    if saved.get("init_from"):
        start = init_from.load_init_params(saved["init_from"], params)  # shapes checked
    else:
        start = sc.init_params(spec.model_config, jax.random.key(seed))
    x0 = np.asarray(fast_weight_features(start, states, spec.window, trained_n,
                                         schedule=spec.schedule))  # fmt: skip
    ans0, bits0, _ = _probe_columns(x0, answers, raw, n_test)
    inputs = np.asarray(states, np.float64)
    ans_in, _, _ = _probe_columns(inputs, answers, raw, n_test)
    (t,) = task.t_values
    return {
        "run_dir": run_dir,
        "t": t,
        "trained_n": trained_n,
        "seed": seed,
        "model_acc": {q: metrics[f"acc/{q}"] for q in task.answer_position_names},
        "majority": majority.tolist(),
        "by_passes": by_p,
        # The start weights' probe, under the key earlier probe.json files use; "start" says
        # which weights they were.
        "untrained": {"answer": ans0.tolist(), "raw_bits": bits0.tolist()},
        "start": "source" if saved.get("init_from") else "untrained",
        "raw_input_answer": ans_in.tolist(),
    }


def _mean(xs):
    return float(np.mean(xs))


def table(results: list[dict], passes: list[int]) -> str:
    ps = sorted(set(passes))
    head = (
        "| t | N | seed | model acc Q1-Q4 | "
        + " | ".join(f"answer probe p={p}" for p in ps)
        + " | raw-bit probe p=N | start weights: answer / raw bits | raw input: answer |"
    )
    lines = [head, "|" + "---|" * (7 + len(ps))]
    for r in sorted(results, key=lambda r: (r["t"], r["trained_n"], r["seed"])):
        by_p = {int(k): v for k, v in r["by_passes"].items()}
        model = " ".join(f"{a:.2f}" for a in r["model_acc"].values())
        cells = [
            f"{_mean(by_p[p]['answer']):.3f}" if p in by_p else "-" for p in ps
        ]  # fmt: skip
        raw_n = _mean(by_p[r["trained_n"]]["raw_bits"])
        un = r["untrained"]
        lines.append(
            f"| {r['t']} | {r['trained_n']} | {r['seed']} | {model} | "
            + " | ".join(cells)
            + f" | {raw_n:.3f} | {_mean(un['answer']):.3f} / {_mean(un['raw_bits']):.3f}"
            + (" (source)" if r.get("start") == "source" else "")
            + f" | {_mean(r['raw_input_answer']):.3f} |"
        )
    per_state = [
        "",
        "Start weights: the untrained model of the same config and seed, or (source) the",
        "parameters a warm-started run began from, probed at the run's trained N.",
        "",
        "Per state (Q1..Q4): the model's accuracy, the answer probe after the wake pass alone",
        "(p = 1) and after the trained N passes, the raw-bit probe (mean over offsets) at",
        "p = 1 and p = N, and the constant answer's rate:",
        "",
        "| t | N | seed | model acc | answer probe p=1 | answer probe p=N | raw bits p=1 "
        "| raw bits p=N | constant |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["t"], r["trained_n"], r["seed"])):
        by_p = {int(k): v for k, v in r["by_passes"].items()}
        one, n = by_p[min(by_p)], by_p[r["trained_n"]]
        cells = [
            list(r["model_acc"].values()), one["answer"], n["answer"],
            np.mean(one["raw_bits"], axis=1), np.mean(n["raw_bits"], axis=1), r["majority"],
        ]  # fmt: skip
        row = " | ".join(" ".join(f"{x:.2f}" for x in c) for c in cells)
        per_state.append(f"| {r['t']} | {r['trained_n']} | {r['seed']} | {row} |")
    return "\n".join(lines + per_state)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    passes = [int(p) for p in FLAGS.passes]
    if FLAGS.report_only:
        with open(os.path.join(FLAGS.out, "probe.json")) as f:
            results = json.load(f)
        return _write_report(results, passes, ", ".join(r["run_dir"] for r in results))
    if not FLAGS.runs:
        raise SystemExit("--runs is required (unless --report_only)")
    run_dirs = sorted({d for g in FLAGS.runs for d in glob.glob(g) if os.path.isdir(d)})
    if not run_dirs:
        raise SystemExit(f"no run directories match {FLAGS.runs!r}")
    if any(p < 1 for p in passes):
        raise SystemExit(f"--passes must be >= 1, got {passes}")
    if not 0 < FLAGS.test_size < FLAGS.size:
        raise SystemExit(f"--test_size must be in (0, --size={FLAGS.size}), got {FLAGS.test_size}")
    checked = {d: checked_run(d) for d in run_dirs}  # every run checked before any is probed
    os.makedirs(FLAGS.out, exist_ok=True)
    results = []
    for d in run_dirs:
        print(f"probing {d}", flush=True)
        results.append(probe_run(d, passes, FLAGS.size, FLAGS.test_size, FLAGS.seed_offset,
                                 checked=checked[d]))  # fmt: skip
        with open(os.path.join(FLAGS.out, "probe.json"), "w") as f:  # kept run by run
            json.dump(results, f, indent=1)
    _write_report(results, passes, " ".join(FLAGS.runs))


def _write_report(results, passes, what):
    text = table(results, passes)
    with open(os.path.join(FLAGS.out, "probe.md"), "w") as f:
        f.write(f"# Fast-weight probe: {what}\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
