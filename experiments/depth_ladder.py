"""The Rule 110 depth ladder's report: does sleep add serial depth? (results/RESULTS.md,
"Depth: Rule 110 beyond memorisation").

    python -m experiments.depth_ladder --results=runs/depth/search/results.jsonl \
        --out=results/depth

Reads the records of one or more sweeps over `task.t_values` (one t per model) and
`passes` (experiments/configs/sweeps.py: rule110_search, rule110_depth) and writes
`<out>/depth_ladder.md`:
  * every run: exact-match accuracy, per-query accuracy Q1..Q4, the constant-answer floor at
    its t (`evaluation.constant_answer_accuracy` on the run's own eval set), steps and
    whether it converged or hit the cap;
  * per (t, arm): mean accuracy and the paired gain over N = 1 (95% paired t-interval and
    sign counts) on the seeds both have; an arm is N, plus what a control changes from the
    ladder's model (`LADDER_MODEL`: more steps, another layout, looping at wake);
  * per control arm: N = 4's paired gain over it (what sleep buys against the control);
  * the t-frontier per (arm, seed): the largest t of the ladder whose model reaches the
    threshold, with every shallower t of the ladder reaching it too.
The t = 0 rows are the retrieval-only control: a ladder counts only where N = 1 at t = 0
answers near 1.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from experiments.sweeping import stats
from experiments.sweeping.report import machines_line

FRONTIER = 0.5  # exact-match accuracy a t must reach to count as learned (fixed in advance)
CONTROL_MIN = 0.95  # the t = 0 control must reach this at N = 1 for the ladder to count
# An attention-only model must end within this of the constant floor on every seed, or the
# task leaks the answer into the query window (decided before any control run, BUILD_NOTES).
LEAK_MARGIN = 0.05

# The ladder's own model (rule110.py:depth with the ladder's stopping rule); a run that
# differs in one of these fields is a control, named after the difference.
LADDER_MODEL = {
    "steps": 6000, "layout": ("attn", "ssm", "attn", "ssm"), "wake_passes": 1, "eviction": "hard",
}  # fmt: skip


def define_flags():
    """The command line, defined only when this module runs as a program: tests import it
    beside other experiment modules whose flags share names (--runs, --out)."""
    flags.DEFINE_list("results", None, "results.jsonl files of the ladder's sweeps")
    flags.DEFINE_list("runs", None, "or: directories of run directories (read while sweeps run)")
    flags.DEFINE_string("out", None, "report directory (depth_ladder.md)")
    flags.DEFINE_float("frontier", FRONTIER, "accuracy that counts a depth as learned")


def load_records(paths: Sequence[str]) -> list[dict]:
    """The completed runs of these sweeps, one per run directory (the first record wins)."""
    seen, out = set(), []
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--results: no such file {path!r}")
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r["status"] != "completed" or r["run_dir"] in seen:
                    continue
                seen.add(r["run_dir"])
                out.append(r)
    return out


def records_from_runs(parents: Sequence[str]) -> list[dict]:
    """The completed runs under these directories (each child a run directory), read from
    their summary.json as the sweep's results.jsonl would hold them: for a report while the
    sweeps still run (they write results.jsonl when they end)."""
    from experiments.sweeping.runner import run_record

    out = []
    for parent in parents:
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"--runs: no such directory {parent!r}")
        for name in sorted(os.listdir(parent)):
            run_dir = os.path.join(parent, name)
            if not os.path.exists(os.path.join(run_dir, "config.json")):
                continue
            r = run_record(run_dir, seed=_config(run_dir)["seed"])
            if r["status"] == "completed":
                out.append(r)
    return out


def _config(run_dir: str) -> dict:
    """The run's flat config (config.json's "config") with the resolved task knobs."""
    with open(os.path.join(run_dir, "config.json")) as f:
        recorded = json.load(f)
    return {**recorded["config"], "task": recorded["task"]}


def arm_of(c: dict) -> str:
    """A run's arm: its N, plus what it changes from `LADDER_MODEL` (e.g. "1 (cap 23000)",
    "1 (4 wake runs)", "1 (attn+attn+attn+attn)", "4 (sliding after 1000 hard)"); a config
    lacking a field has its default."""
    changes = []
    if c.get("wake_passes", 1) != LADDER_MODEL["wake_passes"]:
        changes.append(f"{c['wake_passes']} wake runs")
    if c.get("steps", LADDER_MODEL["steps"]) != LADDER_MODEL["steps"]:
        changes.append(f"cap {c['steps']}")
    if tuple(c.get("layout", LADDER_MODEL["layout"])) != LADDER_MODEL["layout"]:
        changes.append("+".join(c["layout"]))
    if c["task"].get("probe_radius"):
        changes.append(f"any bit within {c['task']['probe_radius']}")
    if c.get("eviction", LADDER_MODEL["eviction"]) != LADDER_MODEL["eviction"]:
        warmup = c.get("hard_eviction_steps") or 0
        changes.append(c["eviction"] + (f" after {warmup} hard" if warmup else ""))
    if c.get("init_from"):  # a warm start: named by its source's run, less the seed, so
        # that the seeds of one arm share a name (and on any machine: the source may be gone)
        source = re.sub(r"[,/]?seed=\d+", "", os.path.normpath(c["init_from"]))
        changes.append(f"warm from {os.path.basename(source) or source}")
    return f"{c['passes']}" + (f" ({', '.join(changes)})" if changes else "")


def depth_and_arm(r: dict) -> tuple[int, str]:
    """(t, arm) of a run, from its recorded config (one t per model in the ladder)."""
    c = _config(r["run_dir"])
    ts = tuple(c["task"]["t_values"])
    if len(ts) != 1:
        raise ValueError(f"{r['run_dir']}: the ladder needs one t per model, got {ts}")
    return int(ts[0]), arm_of(c)


def _arm_key(arm: str):
    """Sort order: plain N first by N, then the controls."""
    n, _, rest = arm.partition(" ")
    return (bool(rest), int(n), rest)


@functools.lru_cache(maxsize=64)
def constant_floor(run_dir: str) -> float:
    """Exact-match accuracy of the best constant answer on the run's own eval set."""
    from sleep_consolidation.tasks import make_task
    from sleep_consolidation.training import evaluation

    c = _config(run_dir)
    knobs = {k: tuple(v) if isinstance(v, list) else v for k, v in c["task"].items()}
    task = make_task(knobs.pop("name"), **knobs)
    return evaluation.constant_answer_accuracy(task, task.eval_batch(c["seed"], c["eval_size"]))[
        "acc"
    ]


def _f(x, digits=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cap_note(r: dict) -> str:
    if r.get("stop_reason") == "converged":
        return f"converged at {r.get('stopped_at')}"
    return f"**capped** at {r.get('stopped_at')}" if r.get("stop_reason") else "no stopping rule"


def runs_table(records: Sequence[dict]) -> str:
    lines = [
        "| t | arm (N) | seed | acc | Q1 | Q2 | Q3 | Q4 | constant | steps to 90% of final | stop "
        "| train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (*_sort_key(*depth_and_arm(r)), r["seed"])):
        t, n = depth_and_arm(r)
        ev = r["eval"]
        qs = " | ".join(_f(ev.get(f"acc/Q{i}")) for i in range(1, 5))
        lines.append(
            f"| {t} | {n} | {r['seed']} | {_f(ev.get('acc'))} | {qs} | "
            f"{_f(constant_floor(r['run_dir']))} | {r.get('steps_to_90pct') or '-'} | "
            f"{_cap_note(r)} | {_f(r.get('train_s'), 0)} |"
        )
    return "\n".join(lines)


def _sort_key(t, arm):
    return (t, *_arm_key(arm))


def _by_cell(records) -> dict[tuple[int, str], dict[int, dict]]:
    cells: dict[tuple[int, str], dict[int, dict]] = {}
    for r in records:
        cells.setdefault(depth_and_arm(r), {})[r["seed"]] = r
    return cells


def _pair_row(t, arm, runs, other, other_name) -> str | None:
    """One row: `arm` against `other` at depth t on the seeds both have (None if none)."""
    seeds = sorted(set(runs) & set(other))
    if not seeds:
        return None
    acc = [runs[s]["eval"].get("acc") for s in seeds]
    acc_o = [other[s]["eval"].get("acc") for s in seeds]
    s = stats.paired_summary(stats.paired_differences(acc, acc_o))
    capped = sum(x.get("stop_reason") != "converged" for s_ in seeds for x in (runs[s_], other[s_]))
    return (
        f"| {t} | {arm} | {other_name} | {','.join(map(str, seeds))} | {np.mean(acc):.3f} | "
        f"{np.mean(acc_o):.3f} | {s.fmt()} | {capped} of {2 * len(seeds)} |"
    )


def gains_table(records: Sequence[dict]) -> str:
    """Per (t, arm other than N = 1): mean accuracy and the paired gain over N = 1 at the
    same t; then, per control arm, N = 4's paired gain over that control."""
    cells = _by_cell(records)
    lines = [
        f"| t | arm | against | seeds | arm mean | against mean | gain "
        f"({stats.describe_method('t')}) | capped runs in the pairs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(cells.items(), key=lambda kv: _sort_key(*kv[0]))
    for (t, arm), runs in ordered:
        if arm != "1":
            lines.append(_pair_row(t, arm, runs, cells.get((t, "1"), {}), "1"))
        n, _, changes = arm.partition(" ")
        if changes and n != "1" and (t, f"1 {changes}") in cells:
            lines.append(_pair_row(t, arm, runs, cells[(t, f"1 {changes}")], f"1 {changes}"))
    for (t, arm), runs in ordered:
        if " " in arm and (t, "4") in cells:  # a control: what N = 4 buys against it
            lines.append(_pair_row(t, "4", cells[(t, "4")], runs, arm))
    return "\n".join(line for line in lines if line is not None)


def seed_frontier(accs: dict[int, float], ladder: Sequence[int], threshold: float) -> str:
    """One seed's t-frontier from its accuracy per trained t (`accs`): the largest t reached
    with every shallower t it trained reached too. Where the seed did not train the depths
    that would pin it down, a bound: "<6" (failed its shallowest trained t, shallower ones
    untrained), ">=6" (reached its deepest trained t, deeper ones untrained)."""
    trained = [t for t in ladder if t in accs]
    front = 0
    for t in trained:
        if accs[t] < threshold:
            break
        front = t
    if front == 0 and trained[0] != ladder[0]:
        return f"<{trained[0]}"
    if front == trained[-1] and front != ladder[-1]:
        return f">={front}"
    return str(front)


def frontier_table(records: Sequence[dict], threshold: float) -> str:
    """Per (arm, seed): the largest t of the ladder reached (acc >= threshold at it and at
    every shallower t of the ladder that seed trained in that arm), or a bound where the
    seed's depths do not pin it down; the mean is over the seeds with an exact frontier."""
    cells = _by_cell(records)
    ladder = sorted({t for t, _ in cells if t > 0})
    lines = [
        f"t-frontier: the largest t in {ladder} with exact-match acc >= {threshold:g} at it and "
        "every shallower t the seed trained at (per seed; 0 = not even the shallowest; "
        "<t or >=t: a bound, where the seed did not train the depths that would pin it; "
        "the mean is over exact frontiers only).",
        "",
        "| arm (N) | per seed (seed: frontier) | mean (seeds) |",
        "|---|---|---|",
    ]
    for n in sorted({n for _, n in cells if " " not in n}, key=_arm_key):  # controls: t* only
        seeds = sorted({s for (t, m), runs in cells.items() if m == n and t > 0 for s in runs})
        fronts = []
        for seed in seeds:
            accs = {t: cells[(t, n)][seed]["eval"].get("acc") or 0.0 for t in ladder
                    if seed in cells.get((t, n), {})}  # fmt: skip
            fronts.append(seed_frontier(accs, ladder, threshold))
        exact = [int(f) for f in fronts if f.isdigit()]
        mean = f"{np.mean(exact):.2f} ({len(exact)})" if exact else "- (0)"
        per_seed = " ".join(f"{s}:{f}" for s, f in zip(seeds, fronts, strict=True))
        lines.append(f"| {n} | {per_seed} | {mean} |")
    return "\n".join(lines)


def control_line(records: Sequence[dict]) -> str:
    """Whether the retrieval-only control holds: N = 1 at t = 0 answers near 1."""
    runs = _by_cell(records).get((0, "1"), {})
    if not runs:
        return "No t = 0 control run: the ladder cannot show that storage works."
    return _retrieval_line(
        "Retrieval-only control (t = 0, N = 1)", runs, "the ladder does not count"
    )


def probe_lines(records: Sequence[dict]) -> list[str]:
    """The wide retrieval controls (t = 0, each query any bit within r of bit 0): whether
    every bit an answer at t = r depends on is stored, per seed."""
    cells = _by_cell(records)
    return [
        _retrieval_line(
            f"Wide retrieval control ({arm}, t = 0)",
            runs,
            "what fails at t = r may be storage, not computation",
        )  # fmt: skip
        for (t, arm), runs in sorted(cells.items(), key=lambda kv: _sort_key(*kv[0]))
        if t == 0 and "any bit within" in arm
    ]


def _retrieval_line(name: str, runs: dict[int, dict], consequence: str) -> str:
    accs = {s: r["eval"].get("acc") for s, r in sorted(runs.items())}
    ok = all(a is not None and a >= CONTROL_MIN for a in accs.values())
    seeds = ", ".join(f"seed {s}: {_f(a)}" for s, a in accs.items())
    verdict = "holds" if ok else f"**fails** (below {CONTROL_MIN}): {consequence}"
    return f"{name}: {seeds}; {verdict}."


def leak_line(records: Sequence[dict]) -> str | None:
    """Whether the attention-only control stays at the constant floor (no fast weights: it
    can answer from nothing but the query window); None where no such run exists."""
    runs = [r for r in records if "ssm" not in _config(r["run_dir"]).get("layout", ("ssm",))]
    if not runs:
        return None
    above = {
        (depth_and_arm(r)[0], r["seed"]): (r["eval"].get("acc") or 0.0)
        - constant_floor(r["run_dir"])
        for r in sorted(runs, key=lambda r: (depth_and_arm(r)[0], r["seed"]))
    }
    ok = all(d <= LEAK_MARGIN for d in above.values())
    per = ", ".join(f"t = {t} seed {s}: {d:+.3f}" for (t, s), d in above.items())
    verdict = "holds" if ok else f"**fails** (above {LEAK_MARGIN}): the ladder does not count"
    return f"Attention-only control (acc minus the constant floor): {per}; {verdict}."


def report(records: Sequence[dict], threshold: float = FRONTIER) -> str:
    if not records:
        raise ValueError("no completed runs in the given results")
    return (
        "\n\n".join(
            [
                "# Rule 110 depth ladder",
                machines_line(records),
                control_line(records),
                *probe_lines(records),
                *filter(None, [leak_line(records)]),
                "## Every run",
                runs_table(records),
                "## Gain over N = 1 per depth, and of N = 4 over each control",
                gains_table(records),
                "## t-frontier",
                frontier_table(records, threshold),
            ]
        )
        + "\n"
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS.results and not flags.FLAGS.runs:
        raise app.UsageError("give --results (the sweeps' results.jsonl) or --runs")
    records = load_records(flags.FLAGS.results or [])
    seen = {r["run_dir"] for r in records}
    records += [r for r in records_from_runs(flags.FLAGS.runs or []) if r["run_dir"] not in seen]
    if not any(r.get("status") == "completed" for r in records):  # one line, no traceback
        given = [*(flags.FLAGS.results or []), *(flags.FLAGS.runs or [])]
        raise app.UsageError(f"no completed runs in {given} (runs still training are read "
                             "once they finish)")  # fmt: skip
    text = report(records, flags.FLAGS.frontier)
    print(text)
    if flags.FLAGS.out:
        os.makedirs(flags.FLAGS.out, exist_ok=True)
        with open(os.path.join(flags.FLAGS.out, "depth_ladder.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
