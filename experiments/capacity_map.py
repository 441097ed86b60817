"""The capacity map (issue 13): recall after eviction over the load n / d_k x N, at
convergence, beside the no-learning reference, plus the adaptive-sleep comparison.

    python -m experiments.sweep --sweep=experiments/configs/sweeps.py:capacity_map \
        --workdir=runs/capacity/capacity_map --runs_dir=runs/capacity/runs
    python -m experiments.capacity_map --runs_dir=runs/capacity/runs --out=results/capacity_map

Reads every finished run under --runs_dir (config.json + summary.json of
`experiments.train`), and writes to --out:
  * table.md / capacity_map.json: per (n, N) the converged accuracy over seeds, the paired
    gain over N = 1 with a 95% paired t-interval and sign counts, and which runs hit the
    step cap (flagged †);
  * the no-learning reference (`sleep_consolidation.capacity`): N plain delta-rule sweeps
    (beta = 1) over n random unit keys in R^16, and over the trained models' own keys and
    values (the first ssm block's, per head, at the value tokens of the evicted window);
  * capacity_map.png: heatmaps of the converged accuracy, the paired gain and both
    references;
  * adaptive.md: on the hardest loads, each model evaluated with adaptive sleep
    (`sleep_consolidation.adaptive_sleep`, a threshold eps per pass, up to --max_passes)
    against fixed N, at matched average passes.
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
from experiments.configs import common
from experiments.sweeping import stats
from experiments.sweeping.rundir import RunDir
from sleep_consolidation import adaptive, capacity

_RUNS_DIR = flags.DEFINE_string("runs_dir", None, "directory holding the sweep's run dirs")
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
flags.mark_flags_as_required(["runs_dir", "out"])

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
        }
        base = by.get((n, 1), {})
        paired = [s for s in sorted(runs) if s in base]
        if N != 1 and len(paired) >= 2:
            d = [runs[s]["acc"] - base[s]["acc"] for s in paired]
            ps = stats.paired_summary(d, "t")
            cell["gain"] = {
                "seeds": paired,
                "diffs": d,
                "mean": ps.mean,
                "lo": ps.lo,
                "hi": ps.hi,
                "signs": [ps.positive, ps.negative, ps.zero],
                "unconverged": any(not base[s]["converged"] for s in paired)
                or bool(cell["unconverged"]),
            }
        cells[(n, N)] = cell
    return cells


def random_reference(loads, passes, draws: int) -> dict:
    """No-learning accuracy of N plain delta sweeps over n random unit keys in R^16 (values
    from a 64-entry random codebook, as the task's 64 value tokens), mean over draws."""
    out = {}
    for n in loads:
        keys = jax.random.split(jax.random.key(n), draws)
        draw = functools.partial(capacity.random_reference, n=n, d=D_K, max_passes=max(passes))
        curve = jax.vmap(lambda k, draw=draw: draw(k)["accuracy"])(keys)
        out[n] = {N: float(jnp.mean(curve[:, N - 1])) for N in passes}
    return out


def _spec_and_params(run_dir: str):
    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)["config"]
    merged = {**common.base_config(saved["task"]["name"]).to_dict(), **saved}
    return sc.resolve_config(merged), sc.load_params(run_dir), saved["seed"]


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


def _fmt_gain(g) -> str:
    flag = "†" if g["unconverged"] else ""
    s = g["signs"]
    return f"{g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}] {s[0]}+/{s[1]}-{flag}"


def tables(cells, rand_ref, trained_ref) -> str:
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
        row = []
        for N in passes:
            c = cells.get((n, N))
            if c is None:
                row.append("—")
                continue
            flag = f"† ({len(c['unconverged'])}/{len(c['seeds'])})" if c["unconverged"] else ""
            row.append(f"{c['acc_mean']:.3f} ± {c['acc_sd']:.3f} (n={len(c['seeds'])}){flag}")
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
        if n in trained_ref:
            lines.append(
                f"| {n} | trained model's own | "
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
                notes_gain[i, j] = f"{g['mean']:+.3f}\n[{g['lo']:+.2f},{g['hi']:+.2f}]"
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
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
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
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


def main(_):
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    out = _OUT.value
    os.makedirs(out, exist_ok=True)
    records = collect(_RUNS_DIR.value)
    if not records:
        raise SystemExit(f"no finished one-load runs under {_RUNS_DIR.value}")
    cells = grid_stats(records)
    loads = sorted({n for n, _ in cells})
    rand_ref = random_reference(loads, REF_PASSES, _REF_DRAWS.value)
    trained_ref = {}
    for n in loads:  # the N=1 models' keys: what one wake pass writes, before any sleep
        runs = [r for r in records if r["n"] == n and r["N"] == 1]
        if runs:
            per_run = [trained_reference(r["dir"], REF_PASSES, _REF_SIZE.value) for r in runs]
            trained_ref[n] = {
                N: {k: float(np.mean([p[N][k] for p in per_run])) for k in ("acc", "cos")}
                for N in REF_PASSES
            }
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(tables(cells, rand_ref, trained_ref))
    plot(cells, rand_ref, trained_ref, os.path.join(out, "capacity_map.png"))
    adaptive_results = {}
    for r in records:
        if str(r["n"]) in _ADAPTIVE_LOADS.value and str(r["N"]) in _ADAPTIVE_TRAIN_N.value:
            name = f"n={r['n']},N={r['N']},seed={r['seed']}"
            adaptive_results[name] = adaptive_vs_fixed(
                r["dir"], [float(e) for e in _EPS.value], _MAX_PASSES.value, _ADAPTIVE_SIZE.value
            )
    if adaptive_results:
        with open(os.path.join(out, "adaptive.md"), "w") as f:
            f.write(adaptive_table(adaptive_results))
    with open(os.path.join(out, "capacity_map.json"), "w") as f:
        json.dump(
            {
                "records": records,
                "random_reference": rand_ref,
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
