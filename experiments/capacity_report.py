"""The capacity map's tables and figure, from run records (no model is run here):
`experiments/capacity_map.py` computes the references and the adaptive comparison and
calls these to write them.
"""

from __future__ import annotations

import json
import os

import numpy as np

from experiments.configs.sweep_spec import PLATEAU_FLOOR
from experiments.sweeping import stats
from experiments.sweeping.rundir import RunDir

D_K = 16  # head dimension of recall:capacity (d_model 32, 2 heads)
REF_PASSES = (1, 2, 4, 8)  # N of the no-learning reference (beyond the trained N too)


def collect(runs_dir: str) -> list[dict]:
    """One record per finished run: load n, window, N, seed, metrics and convergence."""
    out = []
    for name in sorted(os.listdir(runs_dir)):
        run = RunDir(os.path.join(runs_dir, name))
        cfg, summary = run.config(), run.summary()
        if not cfg or not summary or summary.get("status") != "completed":
            continue
        c = cfg["config"]
        loads = c["task"]["num_pairs_values"]
        if len(loads) != 1:
            continue  # not a one-load capacity-map run
        out.append(
            {
                "dir": run.path,
                "n": int(loads[0]),
                "window": int(c["task"]["window"]),
                "N": int(c["passes"]),
                "seed": int(c["seed"]),
                "acc": summary["eval"]["acc"],
                "converged": summary.get("converged") is True,
                "stopped_at": summary.get("stopped_at"),
                "steps_to_90pct": summary.get("steps_to_90pct"),
                "wall_s": summary.get("wall_s"),
            }
        )
    return out


def load_previous(paths) -> dict:
    """What earlier reports (capacity_map.json, adaptive.json) hold, with their JSON string
    keys turned back into numbers: {"records", "trained_reference", "adaptive"}.

    Why: a report is rebuilt from run directories, and those are not kept (checkpoints are
    never committed); the committed JSON of an earlier report carries each run's record, so
    a map extended by new runs can still show every run it rests on.
    """
    out = {"records": [], "trained_reference": {}, "adaptive": {}}
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        if not isinstance(d, dict) or not {"records", "trained_reference", "adaptive"} & set(d):
            raise ValueError(f"{path} is not a capacity-map report (no records / adaptive)")
        for r in d.get("records", []):
            out["records"].append({**r, "source": path})
        for n, by_N in d.get("trained_reference", {}).items():
            out["trained_reference"][int(n)] = {int(N): v for N, v in by_N.items()}
        for name, r in d.get("adaptive", {}).items():
            out["adaptive"][name] = {
                "fixed": {int(N): a for N, a in r["fixed"].items()},
                "adaptive": {float(e): a for e, a in r["adaptive"].items()},
            }
    return out


def merge_records(on_disk: list[dict], previous: list[dict]) -> list[dict]:
    """The runs on disk, plus each earlier record whose (n, N, seed) has no run on disk (a
    run on disk is the newer word on its point; a point seen twice before keeps the last)."""
    key = lambda r: (r["n"], r["N"], r["seed"])
    merged = {key(r): r for r in previous}
    merged.update({key(r): r for r in on_disk})
    return [merged[k] for k in sorted(merged)]


def _left_plateau(r) -> bool:
    """A run below the floor is still on the loss plateau: it has no learning speed (90% of
    a plateau accuracy is reached at once)."""
    return r["acc"] >= PLATEAU_FLOOR


def _paired(d, seeds) -> dict:
    ps = stats.paired_summary(d, "t")
    return {"seeds": seeds, "diffs": d, "mean": ps.mean, "lo": ps.lo, "hi": ps.hi,
            "signs": [ps.positive, ps.negative, ps.zero]}  # fmt: skip


def grid_stats(records: list[dict]) -> dict:
    """Per (n, N): accuracies by seed, and the paired difference against N = 1."""
    by = {}
    for r in records:
        by.setdefault((r["n"], r["N"]), {})[r["seed"]] = r
    cells = {}
    for (n, N), runs in sorted(by.items()):
        accs = [runs[s]["acc"] for s in sorted(runs)]
        cell = {
            "n": n,
            "N": N,
            "seeds": sorted(runs),
            "acc_mean": float(np.mean(accs)),
            "acc_sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else float("nan"),
            "unconverged": sorted(s for s, r in runs.items() if not r["converged"]),
            "steps_to_90pct": [runs[s]["steps_to_90pct"] for s in sorted(runs)],
            "wall_s": float(sum(r["wall_s"] or 0.0 for r in runs.values())),
            "left_plateau": sorted(s for s, r in runs.items() if _left_plateau(r)),
        }
        base = by.get((n, 1), {})
        paired = [s for s in sorted(runs) if s in base]
        both_left = [
            s for s in paired
            if _left_plateau(runs[s]) and _left_plateau(base[s])
            and None not in (runs[s]["steps_to_90pct"], base[s]["steps_to_90pct"])
        ]  # fmt: skip
        if N != 1 and len(both_left) >= 2:
            d = [runs[s]["steps_to_90pct"] - base[s]["steps_to_90pct"] for s in both_left]
            cell["speed_gain"] = _paired(d, both_left)
        if N != 1 and len(paired) >= 2:
            d = [runs[s]["acc"] - base[s]["acc"] for s in paired]
            cell["gain"] = _paired(d, paired)
            cell["gain"]["unconverged"] = any(not base[s]["converged"] for s in paired) or bool(
                cell["unconverged"]
            )
        cells[(n, N)] = cell
    return cells


def _fmt_gain(g, digits: int = 3) -> str:
    """mean [lo, hi] k+/m-, with † when a run of the pair hit the cap."""
    flag = "†" if g.get("unconverged") else ""
    s, f = g["signs"], f"+.{digits}f"
    return f"{g['mean']:{f}} [{g['lo']:{f}}, {g['hi']:{f}}] {s[0]}+/{s[1]}-{flag}"


def _fmt_acc(c) -> str:
    flag = f"† ({len(c['unconverged'])}/{len(c['seeds'])})" if c["unconverged"] else ""
    return f"{c['acc_mean']:.3f} ± {c['acc_sd']:.3f} (n={len(c['seeds'])}){flag}"


def _fmt_learning(c) -> str:
    """Runs that left the plateau / runs, and their mean steps to 90% of the final accuracy."""
    steps = [
        t for s, t in zip(c["seeds"], c["steps_to_90pct"])
        if s in c["left_plateau"] and t is not None
    ]  # fmt: skip
    speed = f", {np.mean(steps):.0f}" if steps else ""
    return f"{len(c['left_plateau'])}/{len(c['seeds'])}{speed}"


def _cells_row(cells, n, passes, fmt) -> list[str]:
    return [fmt(cells[(n, N)]) if (n, N) in cells else "—" for N in passes]


def stuck_vs_n1(cells, loads, N) -> dict | None:
    """Paired over (load, seed) at the given loads: runs of N still on the plateau against
    their N = 1 pairs (exact McNemar test, `stats.paired_failures`); None without pairs."""
    treated, baseline = [], []
    for n in loads:
        c, b = cells.get((n, N)), cells.get((n, 1))
        if c is None or b is None:
            continue
        for s in sorted(set(c["seeds"]) & set(b["seeds"])):
            treated.append(s not in c["left_plateau"])
            baseline.append(s not in b["left_plateau"])
    return stats.paired_failures(treated, baseline) if treated else None


def _stuck_lines(cells, loads, passes) -> list[str]:
    hard = [n for n in loads if n >= D_K]
    lines = [
        f"## Stuck on the loss plateau at the loads n >= d_k ({', '.join(map(str, hard))}), "
        "pooled over loads and seeds",
        "",
        "Pairs (load, seed) with both runs; stuck = final accuracy < "
        f"{PLATEAU_FLOOR}. p: exact McNemar test on the discordant pairs.",
        "",
        "| N | pairs | stuck at N only | stuck at N=1 only | both | p |",
        "|---|---|---|---|---|---|",
    ]
    for N in passes:
        r = stuck_vs_n1(cells, hard, N) if N != 1 else None
        if r:
            lines.append(
                f"| {N} | {r['pairs']} | {r['treated_only']} | {r['baseline_only']} | "
                f"{r['both']} | {r['p']:.3f} |"
            )
    return lines


def tables(cells, rand_ref, trained_ref, rand_ref_2h=None) -> str:
    loads = sorted({n for n, _ in cells})
    passes = sorted({N for _, N in cells})
    head = "| n (n/d_k) | " + " | ".join(f"N={N}" for N in passes) + " |"
    rule = "|---|" + "---|" * len(passes)
    lines = [
        "## Converged accuracy (mean ± sd over seeds; † = a run hit the step cap)",
        "",
        head,
        rule,
    ]
    for n in loads:
        row = _cells_row(cells, n, passes, _fmt_acc)
        lines.append(f"| {n} ({n / D_K:.2f}) | " + " | ".join(row) + " |")
    lines += [
        "",
        "## Paired gain over N=1 (mean, 95% paired t-interval, signs +/-)",
        "",
        "| n | " + " | ".join(f"N={N}" for N in passes if N != 1) + " |",
        "|---|" + "---|" * (len(passes) - 1),
    ]
    for n in loads:
        row = [
            _fmt_gain(cells[(n, N)]["gain"]) if "gain" in cells.get((n, N), {}) else "—"
            for N in passes
            if N != 1
        ]
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"## Learning: runs that left the loss plateau (final accuracy >= {PLATEAU_FLOOR}), "
        "and steps to 90% of the final accuracy",
        "",
        "Per cell: runs that left / runs, and the mean steps to 90% over the runs that left. "
        "Paired: N minus N=1 in steps over the seeds where both left (95% paired "
        "t-interval, signs +/-; negative = faster).",
        "",
        "| n | " + " | ".join(f"N={N}" for N in passes)
        + " | " + " | ".join(f"N={N} - N=1 (steps)" for N in passes if N != 1) + " |",
        "|---|" + "---|" * (2 * len(passes) - 1),
    ]  # fmt: skip
    for n in loads:
        row = _cells_row(cells, n, passes, _fmt_learning)
        for N in passes:
            if N == 1:
                continue
            g = cells.get((n, N), {}).get("speed_gain")
            row.append(f"{_fmt_gain(g, digits=0)} (n={len(g['seeds'])})" if g else "—")
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    lines += ["", *_stuck_lines(cells, loads, passes)]
    lines += [
        "",
        "## No-learning reference: N plain delta sweeps (beta = 1), accuracy",
        "",
        "| n | keys | " + " | ".join(f"N={N}" for N in REF_PASSES) + " |",
        "|---|---|" + "---|" * len(REF_PASSES),
    ]
    for n in loads:
        lines.append(
            f"| {n} | random unit, R^16 | "
            + " | ".join(f"{rand_ref[n][N]:.3f}" for N in REF_PASSES)
            + " |"
        )
        if rand_ref_2h is not None:
            lines.append(
                f"| {n} | random unit, R^32 (2 heads as one) | "
                + " | ".join(f"{rand_ref_2h[n][N]:.3f}" for N in REF_PASSES)
                + " |"
            )
        if n in trained_ref:
            lines.append(
                f"| {n} | trained N=1 models' own (per head) | "
                + " | ".join(f"{trained_ref[n][N]['acc']:.3f}" for N in REF_PASSES)
                + " |"
            )
    return "\n".join(lines) + "\n"


def plot(cells, rand_ref, trained_ref, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = sorted({n for n, _ in cells})
    passes = sorted({N for _, N in cells})
    acc = np.full((len(loads), len(passes)), np.nan)
    gain = np.full_like(acc, np.nan)
    ref = np.array([[rand_ref[n][N] for N in REF_PASSES] for n in loads])
    tref = np.array(
        [[trained_ref.get(n, {}).get(N, {}).get("acc", np.nan) for N in REF_PASSES] for n in loads]
    )
    notes_acc, notes_gain = {}, {}
    for i, n in enumerate(loads):
        for j, N in enumerate(passes):
            c = cells.get((n, N))
            if c is None:
                continue
            acc[i, j] = c["acc_mean"]
            notes_acc[i, j] = f"{c['acc_mean']:.2f}" + ("†" if c["unconverged"] else "")
            if "gain" in c:
                g = c["gain"]
                gain[i, j] = g["mean"]
                flag = "†" if g["unconverged"] else ""
                notes_gain[i, j] = f"{g['mean']:+.3f}{flag}\n[{g['lo']:+.3f},{g['hi']:+.3f}]"
    fig, axes = plt.subplots(1, 4, figsize=(19, 3.8))
    panels = [
        (acc, notes_acc, "trained: converged accuracy", "viridis", (0, 1)),
        (
            gain,
            notes_gain,
            "trained: paired gain over N=1 (95% CI)",
            "RdBu",
            (
                -max(0.05, np.nanmax(np.abs(gain), initial=0)),
                max(0.05, np.nanmax(np.abs(gain), initial=0)),
            ),
        ),
        (
            ref,
            {(i, j): f"{ref[i, j]:.2f}" for i in range(len(loads)) for j in range(len(REF_PASSES))},
            "no learning: random unit keys",
            "viridis",
            (0, 1),
        ),
        (
            tref,
            {
                (i, j): f"{tref[i, j]:.2f}"
                for i in range(len(loads))
                for j in range(len(REF_PASSES))
                if not np.isnan(tref[i, j])
            },
            "no learning: the N=1 models' own keys",
            "viridis",
            (0, 1),
        ),
    ]
    for k, (ax, (data, notes, title, cmap, (lo, hi))) in enumerate(zip(axes, panels)):
        cols = passes if k < 2 else REF_PASSES
        im = ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, aspect="auto", origin="lower")
        for (i, j), text in notes.items():
            ax.text(j, i, text, ha="center", va="center", fontsize=6 if k == 1 else 7)
        ax.set_xticks(range(len(cols)), [str(N) for N in cols])
        ax.set_yticks(range(len(loads)), [f"{n} ({n / D_K:.2g})" for n in loads])
        ax.set_xlabel("N (passes)")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0].set_ylabel("pairs n (n / d_k)")
    fig.suptitle(
        "recall after eviction: load x N (head dim 16); † = a run hit the step cap", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def adaptive_table(results: dict) -> str:
    """results: {run name: adaptive_vs_fixed(...)} -> markdown, with the fixed-N accuracy
    interpolated at each adaptive setting's mean N (matched average passes)."""
    lines = [
        "Fixed N (N = 1, 2, ...) accuracy of each model, on the same examples:",
        "",
        "| run | fixed N accuracy |",
        "|---|---|",
    ]
    for name, r in sorted(results.items()):
        lines.append(
            f"| {name} | " + " ".join(f"{r['fixed'][N]:.3f}" for N in sorted(r["fixed"])) + " |"
        )
    lines += [
        "",
        "| run | eps | adaptive mean N | adaptive acc | fixed acc at that mean N | diff |",
        "|---|---|---|---|---|---|",
    ]
    diffs = {}
    for name, r in sorted(results.items()):
        Ns = sorted(r["fixed"])
        fixed = [r["fixed"][N] for N in Ns]
        for eps, a in r["adaptive"].items():
            matched = float(np.interp(a["mean_N"], Ns, fixed))
            d = a["acc"] - matched
            diffs.setdefault(eps, []).append(d)
            lines.append(
                f"| {name} | {eps} | {a['mean_N']:.2f} | {a['acc']:.3f} | "
                f"{matched:.3f} | {d:+.3f} |"
            )
    lines += [
        "",
        "Adaptive minus fixed at matched mean passes, over runs (95% t-interval):",
        "",
        "| eps | runs | mean diff | 95% CI | signs +/-/0 |",
        "|---|---|---|---|---|",
    ]
    for eps, d in diffs.items():
        if len(d) >= 2:
            ps = stats.paired_summary(d, "t")
            lines.append(
                f"| {eps} | {len(d)} | {ps.mean:+.3f} | [{ps.lo:+.3f}, {ps.hi:+.3f}] | "
                f"{ps.positive}/{ps.negative}/{ps.zero} |"
            )
    return "\n".join(lines) + "\n"
