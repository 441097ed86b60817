"""The sleep-training recipe study's parts: the recipes, each run's command, the scheduler
and the paired report (the entry point and its run-book: `experiments/recipe_study.py`).

Every run is recall:capacity at one load n (window 2n, delta rule, d_k = 16) trained to
convergence under the capacity map's stopping rule (`sweep_spec.CONVERGED`: eval every 250
steps, cap 6000), with the per-pass statistics logged at every eval. A recipe is a set of
config overrides at one N; a warm-started recipe (`warm_from`) starts each seed from the
final parameters of that seed's run of another recipe, so it waits for that run. Runs go
`--parallel` at a time, each pinned to a core; rerunning the command resumes the
unfinished runs and skips the finished ones. Each N = 4 recipe is paired, seed by seed,
with the N = 1 run of the same optimizer (`baseline`).
"""

from __future__ import annotations

import dataclasses
import os
import time

from experiments.configs.sweep_spec import CONVERGED, PLATEAU_FLOOR
from experiments.sweeping import grid, launch, stats
from experiments.sweeping.rundir import RunDir

CONFIG = "experiments/configs/recall.py:capacity"
# The paper's optimizer (method notes: Muon 2e-3 tuned on N=1 + AdamW 5e-5, clipping 1.0,
# a warm-up), on the CPU model otherwise unchanged.
PAPER = {"optimizer": "muon", "learning_rate": 2e-3, "adam_learning_rate": 5e-5,
         "clip_norm": 1.0, "warmup_steps": 100}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one model of the study is trained."""

    passes: int
    overrides: dict
    baseline: str | tuple[str, ...] | None = None  # the N = 1 recipe(s) it is paired with
    warm_from: str | None = None  # start from this recipe's final parameters (same seed)
    doc: str = ""


RECIPES = {
    "today_N1": Recipe(1, {}, doc="the CPU recipe (AdamW 3e-3, no clipping, re-injection)"),
    "today_N4": Recipe(4, {}, "today_N1", doc="the same at N = 4"),
    "warm_N1": Recipe(1, {}, warm_from="today_N1",
                      doc="N = 1 continued from the same model the same way (fresh optimizer): "
                          "the control for warm_N4's extra training"),
    "curriculum_N4": Recipe(4, {"passes_ramp_steps": 2000}, "today_N1",
                            doc="N ramped 1 -> 4 over the first 2000 steps (N=1, 2, 3 for "
                                "667 steps each)"),
    "warm_N4": Recipe(4, {}, ("today_N1", "warm_N1"), warm_from="today_N1",
                      doc="N = 4 from the converged N = 1 model of the same seed, fresh "
                          "optimizer"),
    "norm_N4": Recipe(4, {"normalize_sleep_input": True}, "today_N1",
                      doc="each sleep pass reads its input at unit RMS"),
    "paper_N1": Recipe(1, PAPER, doc="Muon 2e-3 + AdamW 5e-5, clip 1.0, warm-up 100"),
    "paper_N4": Recipe(4, PAPER, "paper_N1", doc="the same at N = 4"),
    "paper_plain_N1": Recipe(1, {**PAPER, "reinject_embedding": False},
                             doc="the paper's optimizer without re-injection"),
    "paper_plain_N4": Recipe(4, {**PAPER, "reinject_embedding": False}, "paper_plain_N1",
                             doc="the same at N = 4"),
}  # fmt: skip


def run_dir(workdir: str, n: int, recipe: str, seed: int) -> str:
    return os.path.join(workdir, "runs", f"n={n}", recipe, f"seed={seed}")


def command(workdir: str, n: int, recipe: str, seed: int, cap: int, pass_stats: int) -> list:
    """The `experiments.train` command line of one run."""
    r = RECIPES[recipe]
    overrides = {**CONVERGED, "steps": cap, "task.num_pairs_values": (n,), "task.window": 2 * n,
                 "passes": r.passes, "seed": seed, "pass_stats_size": pass_stats,
                 **r.overrides}  # fmt: skip
    if r.warm_from:
        overrides["init_from"] = os.path.abspath(run_dir(workdir, n, r.warm_from, seed))
    return grid.train_command(CONFIG, run_dir(workdir, n, recipe, seed),
                              grid.override_flags(overrides))  # fmt: skip


def parse_queue(entries) -> list[tuple[str, int]]:
    """["warm_N4@0-4", "today_N1@7"] -> [("warm_N4", 0), ..., ("warm_N4", 4), ("today_N1", 7)]."""
    out = []
    for entry in entries:
        name, _, seeds = entry.partition("@")
        check_recipes([name])
        lo, _, hi = seeds.partition("-")
        try:
            out += [(name, s) for s in range(int(lo), int(hi or lo) + 1)]
        except ValueError:
            msg = f"--queue entry {entry!r} is not recipe@seed or recipe@a-b"
            raise ValueError(msg) from None
    return out


def check_recipes(names) -> None:
    unknown = [r for r in names if r not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")


def train_all(jobs, launcher: launch.Launcher, poll_s: float = 5.0) -> dict[str, int]:
    """Runs `jobs` [(key, run_dir, command, source_dir | None)] through the sweep's
    `launcher` (local: one per core, pinned; slurm; debug); a job whose source run has not
    finished waits for it, and is skipped if the source ended without finishing. Returns
    {key: exit code} of the jobs it started (a skipped job is not in it)."""
    running: dict = {}  # run_dir -> (key, submitit job)
    codes: dict[str, int] = {}
    pending = [j for j in jobs if not RunDir(j[1]).finished()]
    while pending or running:
        for path, (key, job) in list(running.items()):
            code = launcher.exit_code(job)
            if code is not None:
                print(f"{time.strftime('%H:%M:%S')} done {key} (exit {code})", flush=True)
                codes[key] = code
                del running[path]
        for item in list(pending):
            if launcher.free_slots(len(pending)) < 1:
                break
            key, path, cmd, source = item
            if source is not None and not RunDir(source).finished():
                if source not in running and all(source != j[1] for j in pending):
                    print(f"skip {key}: its source run {source} did not finish", flush=True)
                    pending.remove(item)
                continue
            os.makedirs(path, exist_ok=True)
            (job,) = launcher.submit([(cmd, path)])
            running[path] = (key, job)
            pending.remove(item)
            print(f"{time.strftime('%H:%M:%S')} start {key}", flush=True)
        if pending or running:
            time.sleep(poll_s)
    return codes


# --- the report --------------------------------------------------------------------------


def record(workdir: str, n: int, recipe: str, seed: int) -> dict | None:
    """One finished run's numbers (None if it has not finished)."""
    rd = RunDir(run_dir(workdir, n, recipe, seed))
    s = rd.summary()
    if s is None or s.get("status") != "completed":
        return None
    acc = (s.get("eval") or {}).get("acc")
    evals = [m for m in rd.metrics() if "pass_stats/h_norm/p1" in m]
    last = evals[-1] if evals else {}
    passes = RECIPES[recipe].passes
    return {
        "n": n, "recipe": recipe, "seed": seed, "acc": acc,
        "left_plateau": acc is not None and acc >= PLATEAU_FLOOR,
        "stopped_at": s.get("step"), "capped": s.get("stop_reason") != "converged",
        "steps_to_90pct": s.get("steps_to_90pct"), "wall_s": s.get("wall_s"),
        "h_norm_growth": _ratio(last, "h_norm", passes),
        "recall_cosine_last": last.get(f"pass_stats/recall_cosine/p{passes}"),
    }  # fmt: skip


def _ratio(line, name, passes):
    a, b = line.get(f"pass_stats/{name}/p1"), line.get(f"pass_stats/{name}/p{passes}")
    return None if not a or b is None else b / a


def report(workdir: str, loads, seeds, names, cap: int) -> tuple[str, list[dict]]:
    """Markdown tables (per recipe and paired against its N = 1 baseline) and the records."""
    recs = [r for n in loads for name in names for s in seeds
            if (r := record(workdir, n, name, s)) is not None]  # fmt: skip
    by = {(r["n"], r["recipe"], r["seed"]): r for r in recs}
    lines = [
        # "its" cap: a study can run recipes under different caps (n = 32's N = 1 sources).
        f"Seeds {', '.join(map(str, seeds))}; † = stopped by its step cap ({cap} unless "
        "the run was given another), not by the stopping rule; "
        f"left = final eval/acc >= {PLATEAU_FLOOR}; steps to 90% of the final accuracy; "
        "warm-started runs also count their source's steps (+src). "
        "‖h‖ growth: mean ‖h‖ after the last pass / after the wake pass, last eval.",
        "",
    ]
    for n in loads:
        lines += [f"### n = {n} (window {2 * n})", "",
                  "| recipe | N | " + " | ".join(f"seed {s}" for s in seeds)
                  + " | left | steps to 90% | wall s | ‖h‖ growth | recall cos (last pass) |",
                  "|---|---|" + "---|" * (len(seeds) + 5)]  # fmt: skip
        for name in names:
            r = RECIPES[name]
            rows = [by.get((n, name, s)) for s in seeds]
            done = [x for x in rows if x]
            if not done:
                continue
            cells = [("—" if x is None else f"{x['acc']:.3f}{'†' if x['capped'] else ''}")
                     for x in rows]  # fmt: skip
            src = [by.get((n, r.warm_from, x["seed"])) if r.warm_from else None for x in done]
            steps = [x["steps_to_90pct"] for x in done if x["steps_to_90pct"] is not None]
            steps_src = [
                x["steps_to_90pct"] + (sr["stopped_at"] if sr else 0)
                for x, sr in zip(done, src)
                if x["steps_to_90pct"] is not None
            ]
            wall = sum(x["wall_s"] or 0 for x in done) / len(done)
            steps_txt = _mean(steps, 0) + (f" (+src {_mean(steps_src, 0)})" if r.warm_from else "")
            lines.append(
                f"| {name} | {r.passes} | " + " | ".join(cells)
                + f" | {sum(x['left_plateau'] for x in done)}/{len(done)} | {steps_txt} | "
                f"{wall:.0f} | {_mean([x['h_norm_growth'] for x in done], 2)} | "
                f"{_mean([x['recall_cosine_last'] for x in done], 3)} |"
            )  # fmt: skip
        lines += ["", f"Paired against the N = 1 run of the same optimizer ("
                  f"{stats.describe_method('t')}; stuck: exact McNemar test):", "",
                  "| recipe | vs | pairs | acc gain | stuck here / only baseline (p) | "
                  "steps to 90% gain |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name, base in [(nm, b) for nm in names for b in _baselines(RECIPES[nm])]:
            pairs = [(by.get((n, name, s)), by.get((n, base, s))) for s in seeds]
            pairs = [(a, b) for a, b in pairs if a and b]
            if not pairs:
                continue
            gain = stats.paired_summary([a["acc"] - b["acc"] for a, b in pairs])
            fail = stats.paired_failures(
                [not a["left_plateau"] for a, _ in pairs], [not b["left_plateau"] for _, b in pairs]
            )
            both = [(a["steps_to_90pct"], b["steps_to_90pct"]) for a, b in pairs
                    if a["left_plateau"] and b["left_plateau"]]  # fmt: skip
            sgain = _steps_gain([a - b for a, b in both])
            src = RECIPES[name].warm_from
            # Counting the source run's steps in the warm start's budget (not against a
            # baseline warm-started from the same source: they cancel).
            if src and RECIPES[base].warm_from != src:
                extra = [by[(n, src, a["seed"])]["stopped_at"] for a, b in pairs
                         if a["left_plateau"] and b["left_plateau"]]  # fmt: skip
                counted = _steps_gain([a - b + e for (a, b), e in zip(both, extra)])
                sgain += f"; with the source's steps {counted}"
            stuck = f"{fail['treated_only']} / {fail['baseline_only']} (p = {fail['p']:.3g})"
            lines.append(f"| {name} | {base} | {len(pairs)} | {gain.fmt()} | {stuck} | "
                         f"{sgain} (n={len(both)}) |")  # fmt: skip
        lines.append("")
    return "\n".join(lines), recs


def _baselines(recipe: Recipe) -> tuple[str, ...]:
    b = recipe.baseline
    return () if b is None else (b,) if isinstance(b, str) else tuple(b)


def _steps_gain(d) -> str:
    """A paired difference in steps: mean [95% t-interval] and signs, in whole steps."""
    if not d:
        return "n/a"
    ps = stats.paired_summary(d)
    ci = "" if ps.lo != ps.lo else f" [{ps.lo:+.0f}, {ps.hi:+.0f}]"  # NaN: one pair
    return f"{ps.mean:+.0f}{ci} {ps.positive}+ {ps.negative}-"


def _mean(xs, digits):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    m = sum(xs) / len(xs)
    return f"{m:.{digits}f}"
