"""Sweeps over consolidation schedules: grids, parallel runs, paired-seed summaries, plots.

A sweep is a base config (file + optional arg, as for `experiments/train.py`), a grid of
overrides (`axes`: dotted config field -> list of values) and a list of seeds. Every grid
point runs once per seed with the *same* seed across points, so each point of a given seed
starts from the same initialisation and sees the same data order (paired seeds). Runs are
independent `python -m experiments.train` processes, several at once; each writes its own
workdir, so a rerun skips finished runs and resumes unfinished ones from their checkpoints.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import queue
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

RESULTS_FILE = "results.jsonl"
SUMMARY_MD = "summary.md"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a sweep: a grid point and a seed."""

    point: tuple[tuple[str, Any], ...]  # sorted (field, value) overrides, seed excluded
    seed: int
    # What the run is launched with and stored under (`store_as_changes`): the point and the
    # sweep's fixed overrides, less the values the base config already has. None: the point.
    stored: tuple[tuple[str, Any], ...] | None = None

    @property
    def point_name(self) -> str:
        return _name(self.point)

    @property
    def name(self) -> str:
        """Its run directory: runs equal as configs have equal names, so sweeps that share
        a runs directory share their runs (e.g. every sweep's N=1 point)."""
        return f"{_name(self.point if self.stored is None else self.stored)},seed={self.seed}"

    def overrides(self) -> dict[str, Any]:
        return {**dict(self.point), "seed": self.seed}


def _name(point) -> str:
    return ",".join(f"{k}={_fmt(v)}" for k, v in point) if point else "base"


def _lookup(config, field: str):
    node = config
    for part in field.split("."):
        node = node[part]
    return node.to_dict() if hasattr(node, "to_dict") else node


def store_as_changes(runs: Sequence[Run], base_config, fixed: Mapping[str, Any] | None = None):
    """Each run with `stored` set: its point plus `fixed`, without the fields whose value
    equals `base_config`'s (call `check_fields` first)."""
    out = []
    for run in runs:
        every = {**(fixed or {}), **dict(run.point)}
        changed = {k: v for k, v in every.items() if _freeze(_lookup(base_config, k)) != _freeze(v)}
        out.append(dataclasses.replace(run, stored=_point_key(changed)))
    return out


def load_config_file(path: str, arg: str | None = None):
    """`get_config(arg)` of the config file at `path` (as `--config=path:arg` would)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep_base_config", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def plain(x):
    """ConfigDict values -> plain Python (lists/tuples/dicts)."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    return x


def axes_and_fixed(sweep_config) -> tuple[dict, dict]:
    """A sweep file's `axes` and `fixed` as plain dicts, list values made tuples."""
    tup = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
    axes = {k: [tup(v) for v in vals] for k, vals in plain(sweep_config.axes).items()}
    fixed = {k: tup(v) for k, v in plain(sweep_config.get("fixed", {})).items()}
    return axes, fixed


def _freeze(v):
    """Lists (e.g. from JSON or ConfigDict) -> tuples, recursively, so points compare equal."""
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _point_key(overrides: Mapping[str, Any]) -> tuple:
    return tuple(sorted(((k, _freeze(v)) for k, v in overrides.items()), key=lambda kv: kv[0]))


def _fmt(v) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + "-".join(_fmt(x) for x in v) + ")"
    return str(v)


def expand_grid(axes: Mapping[str, Sequence[Any]], seeds: Sequence[int]) -> list[Run]:
    """Cartesian product of `axes` (field -> values) times `seeds`, as `Run`s.

    A key may join several fields with "+" to vary them together, e.g.
    `{"passes+steps": [(1, 2000), (4, 500)]}` (zipped, not crossed).
    """
    if not seeds:
        raise ValueError("a sweep needs at least one seed")
    names = list(axes)
    for name in names:
        if not isinstance(axes[name], (list, tuple)) or not axes[name]:
            raise ValueError(f"sweep axis {name!r} must be a non-empty list of values")
    runs = []
    for combo in itertools.product(*(axes[n] for n in names)):
        point = {}
        for name, value in zip(names, combo):
            fields = name.split("+")
            if len(fields) > 1:
                if not isinstance(value, (list, tuple)) or len(value) != len(fields):
                    raise ValueError(f"axis {name!r} needs {len(fields)}-tuples, got {value!r}")
                point.update(zip(fields, value))
            else:
                point[name] = value
        if "seed" in point:
            raise ValueError("put seeds in `seeds`, not in the axes")
        key = _point_key(point)
        runs.extend(Run(key, int(s)) for s in seeds)
    return runs


def check_fields(config, runs: Sequence[Run]) -> None:
    """Every overridden field must exist in the base config (ml_collections ConfigDict)."""
    for run in runs:
        for field in run.overrides():
            node = config
            for part in field.split("."):
                if not hasattr(node, "keys") or part not in node.keys():
                    raise ValueError(
                        f"sweep field {field!r} does not exist in the base config; "
                        f"known top-level fields: {', '.join(sorted(config.keys()))}"
                    )
                node = node[part]


def _override_flag(field: str, value) -> str:
    if isinstance(value, (tuple, list)):
        value = (
            "("
            + ",".join(repr(x) if isinstance(x, str) else str(x) for x in value)
            + ("," if len(value) == 1 else "")
            + ")"
        )
    return f"--config.{field}={value}"


def run_command(
    config_path: str,
    config_arg: str | None,
    run: Run,
    run_dir: str,
    fixed: Mapping[str, Any] | None = None,
) -> list[str]:
    """The `experiments.train` command line of one run (`fixed` overrides apply to all runs;
    a run with `stored` set is launched with exactly those overrides)."""
    spec = config_path + (f":{config_arg}" if config_arg else "")
    cmd = [sys.executable, "-m", "experiments.train", f"--config={spec}", f"--workdir={run_dir}"]
    if run.stored is None:
        overrides = {**(fixed or {}), **run.overrides()}
    else:
        overrides = {**dict(run.stored), "seed": run.seed}
    cmd += [_override_flag(k, v) for k, v in overrides.items()]
    return cmd


def _summary(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_sweep(
    config_path: str,
    config_arg: str | None,
    axes: Mapping[str, Sequence[Any]],
    seeds: Sequence[int],
    workdir: str,
    *,
    parallel: int = 2,
    fixed: Mapping[str, Any] | None = None,
    base_config=None,
    runs_dir: str | None = None,
    log=print,
) -> list[dict]:
    """Trains every run of the grid that has not finished yet, `parallel` at a time.

    Each run's workdir is `<runs_dir>/<run.name>` (runs_dir default `<workdir>/runs`). With
    `base_config` given, fields are checked and runs are named by what they change in it,
    so sweeps given the same runs_dir reuse each other's finished runs.

    Returns:
      One record per run (its point, seed, status and final eval metrics), also written to
      `<workdir>/results.jsonl` (rewritten from the runs' own summaries, so it is exact
      after any interruption).
    """
    runs = expand_grid(axes, seeds)
    if base_config is not None:
        check_fields(base_config, runs + [Run(tuple(sorted((fixed or {}).items())), 0)])
        runs = store_as_changes(runs, base_config, fixed)
    runs_dir = os.path.join(workdir, "runs") if runs_dir is None else runs_dir
    os.makedirs(workdir, exist_ok=True)
    todo = []
    for run in runs:
        s = _summary(os.path.join(runs_dir, run.name))
        if s is not None and s.get("status") == "completed":
            log(f"[sweep] skip finished {run.name}")
        else:
            todo.append(run)

    # One process per core, pinned, so that parallel runs do not fight over both cores.
    cores = queue.Queue()
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    for i in range(parallel):
        cores.put(available[i % len(available)] if available else None)

    def launch(run: Run):
        run_dir = os.path.join(runs_dir, run.name)
        os.makedirs(run_dir, exist_ok=True)
        cmd = run_command(config_path, config_arg, run, run_dir, fixed)
        core = cores.get()
        pin = (
            (lambda: os.sched_setaffinity(0, {core})) if core is not None and parallel > 1 else None
        )
        start = time.time()
        try:
            with open(os.path.join(run_dir, "stdout.log"), "a") as out:
                rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin)
        finally:
            cores.put(core)
        log(f"[sweep] {run.name}: exit {rc} after {time.time() - start:.0f}s")
        return rc

    if todo:
        log(f"[sweep] {len(todo)} of {len(runs)} runs to go, {parallel} at a time")
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            codes = list(pool.map(launch, todo))
        failed = [r.name for r, c in zip(todo, codes) if c != 0]
        if failed:
            log(f"[sweep] failed runs (see their stdout.log): {failed}")
    return collect_results(workdir, runs, runs_dir)


def collect_results(workdir: str, runs: Sequence[Run], runs_dir: str | None = None) -> list[dict]:
    """Reads each run's summary (in `runs_dir`, default `<workdir>/runs`) into one record
    and rewrites `<workdir>/results.jsonl`."""
    runs_dir = os.path.join(workdir, "runs") if runs_dir is None else runs_dir
    records = []
    for run in runs:
        run_dir = os.path.join(runs_dir, run.name)
        s = _summary(run_dir) or {}
        records.append(
            {
                "point": run.point_name,
                "overrides": dict(run.point),
                "seed": run.seed,
                "status": s.get("status", "missing"),
                "eval": s.get("eval", {}),
                "train_s": s.get("train_s"),
                "wall_s": s.get("wall_s"),
                "run_dir": run_dir,
            }
        )
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return records


def _depth_keys(records, metric: str) -> list[str]:
    keys = set()
    for r in records:
        keys.update(k for k in r["eval"] if k.startswith(f"{metric}/d="))
    return sorted(keys, key=lambda k: float(k.split("=")[1]))


def _mean_std(xs) -> str:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1):.3f}"


def baseline_of(point: Mapping[str, Any], baseline: Mapping[str, Any]) -> tuple:
    """The point's paired baseline: the same overrides with the baseline fields swapped in."""
    return _point_key({**point, **baseline})


def summary_table(
    records: Sequence[dict], metric: str = "acc", baseline: Mapping[str, Any] | None = None
) -> str:
    """Markdown: per point, mean ± std over seeds per depth; then per-seed differences
    against the paired baseline point (default: the same point with passes=1)."""
    baseline = {"passes": 1} if baseline is None else dict(baseline)
    done = [r for r in records if r["status"] == "completed"]
    depth_keys = _depth_keys(done, metric) + (
        [metric] if any(metric in r["eval"] for r in done) else []
    )
    points: dict[str, list[dict]] = {}
    for r in done:
        points.setdefault(r["point"], []).append(r)
    head = ["point", "seeds"] + [
        k.replace(f"{metric}/", "") if "/" in k else "all" for k in depth_keys
    ]
    timed = any(r.get("train_s") for r in done)
    lines = [
        f"**{metric}** (mean ± std over seeds)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    if timed:  # the training loop's own time per run (no compile/eval), mean over seeds
        lines[2] = lines[2][:-1] + "| train s |"
        lines[3] += "---|"
    for name, rs in points.items():
        cells = [_mean_std([r["eval"].get(k) for r in rs]) for k in depth_keys]
        if timed:
            cells.append(f"{np.mean([r.get('train_s') or np.nan for r in rs]):.0f}")
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    by_key = {(_point_key(r["overrides"]), r["seed"]): r for r in done}
    diff_lines = []
    for name, rs in points.items():
        ov = rs[0]["overrides"]
        base_key = baseline_of(ov, baseline)
        if base_key == _point_key(ov):
            continue
        cells = []
        for k in depth_keys:
            diffs = []
            for r in sorted(rs, key=lambda r: r["seed"]):
                b = by_key.get((base_key, r["seed"]))
                if (
                    b is not None
                    and k in b["eval"]
                    and r["eval"].get(k) is not None
                    and b["eval"][k] is not None
                ):
                    diffs.append(r["eval"][k] - b["eval"][k])
            cells.append(" ".join(f"{d:+.3f}" for d in diffs) if diffs else "n/a")
        diff_lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if diff_lines:
        base_desc = ", ".join(f"{k}={v}" for k, v in baseline.items())
        lines += [
            "",
            f"**{metric}: per-seed difference against the paired baseline ({base_desc})**",
            "",
            "| point | " + " | ".join(head[2:]) + " |",
            "|" + "---|" * (len(head) - 1),
        ]
        lines += diff_lines
    return "\n".join(lines)


def eval_n_table(records: Sequence[dict], metric: str = "acc") -> str | None:
    """Markdown: per point, `metric` (all depths) when evaluated at each extra N of the
    runs' `eval_passes` (summary keys `N{M}/{metric}`); None if the runs have none."""
    done = [r for r in records if r["status"] == "completed"]
    ns = sorted(
        {int(k[1:].split("/")[0]) for r in done for k in r["eval"] if k.endswith(f"/{metric}")
         and k.startswith("N") and k.count("/") == 1}
    )  # fmt: skip
    if not ns:
        return None
    lines = [
        f"**{metric} when evaluated at N** (rows: the point as trained; mean ± std over seeds)",
        "",
        "| point | " + " | ".join(f"eval N={n}" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
    ]
    points: dict[str, list[dict]] = {}
    for r in done:
        points.setdefault(r["point"], []).append(r)
    for name, rs in points.items():
        cells = [_mean_std([r["eval"].get(f"N{n}/{metric}") for r in rs]) for n in ns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def frontier_table(records: Sequence[dict], threshold: float, metric: str = "acc") -> str:
    """Markdown: per point and seed, the depth frontier = the largest depth d such that
    every depth up to d scores `metric` >= threshold (0 if even the shallowest does not)."""
    done = [r for r in records if r["status"] == "completed"]
    keys = _depth_keys(done, metric)
    lines = [
        f"**depth frontier** (largest depth with {metric} >= {threshold:g} at it and every "
        "shallower depth; per seed)",
        "",
        "| point | per seed | mean |",
        "|---|---|---|",
    ]
    points: dict[str, list[dict]] = {}
    for r in done:
        points.setdefault(r["point"], []).append(r)
    for name, rs in points.items():
        fronts = []
        for r in sorted(rs, key=lambda r: r["seed"]):
            front = 0.0
            for k in keys:
                v = r["eval"].get(k)
                if v is None or v < threshold:
                    break
                front = float(k.split("=")[1])
            fronts.append(front)
        per_seed = " ".join(f"{f:g}" for f in fronts)
        lines.append(f"| {name} | {per_seed} | {np.mean(fronts):.2f} |")
    return "\n".join(lines)


def plot_sweep(
    records: Sequence[dict], path: str, x_field: str = "passes", metric: str = "acc"
) -> str:
    """PNG: left, the metric vs `x_field` per depth (mean ± std over seeds, other fields
    fixed to each distinct combination); right, learning curves (train loss) per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r["status"] == "completed"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    depth_keys = _depth_keys(done, metric)
    groups: dict[tuple, list[dict]] = {}
    for r in done:
        rest = tuple(sorted((k, str(v)) for k, v in r["overrides"].items() if k != x_field))
        groups.setdefault(rest, []).append(r)
    for rest, rs in groups.items():
        xs = sorted(
            {r["overrides"].get(x_field) for r in rs if r["overrides"].get(x_field) is not None}
        )
        if not xs:
            continue
        for k in depth_keys:
            means, stds = [], []
            for x in xs:
                vals = [r["eval"].get(k) for r in rs if r["overrides"].get(x_field) == x]
                vals = [v for v in vals if v is not None]
                means.append(np.mean(vals) if vals else np.nan)
                stds.append(np.std(vals) if len(vals) > 1 else 0.0)
            label = k.replace(f"{metric}/", "") + (
                " " + ",".join(f"{a}={b}" for a, b in rest) if rest else ""
            )
            ax1.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
    ax1.set_xlabel(x_field)
    ax1.set_ylabel(f"eval {metric}")
    ax1.set_title(f"{metric} vs {x_field} per depth")
    ax1.legend(fontsize=7)
    for r in done:
        curve = _loss_curve(r["run_dir"])
        if curve:
            ax2.plot(*zip(*curve), alpha=0.7, label=f"{r['point']} s{r['seed']}")
    ax2.set_xlabel("step")
    ax2.set_ylabel("train loss")
    ax2.set_title("learning curves")
    ax2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _loss_curve(run_dir: str) -> list[tuple[int, float]]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                m = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in m and m["loss"] is not None:
                out.append((m["step"], m["loss"]))
    return out
