"""Sweep declarations, run as
`python -m experiments.sweep --sweep=experiments/configs/sweeps.py:<name> --workdir=...`
(add --dry_run to list the runs and the estimated time first; --launcher=slurm on a cluster).
Every field is overridable: --sweep.seeds=0,1,2 --sweep.axes.passes=1,8 --sweep.parallel=1.

Variants (each function's docstring says what it asks):
  tiny              two points (passes 1, 2) x one seed of recall:tiny: the test smoke.
  main              the README's main job: n = 8 pairs x N in {1,4} x 5 seeds, to convergence.
  main_2000         the main job until 2026-12-02: N in {1,2,4} x 2 seeds, 2000 steps.
  capacity_map      n in {4,8,16,32} pairs x N in {1,2,4} x 5 seeds, to convergence.
  main_converged    its load n = d_k = 16 x N in {1,4} x 5 seeds (~30 min on 2 cores).
  capacity_map_low / capacity_map_high   the map in two parts: n <= 16, and n = 32.
  capacity_map_n8   the map's N = 8 column at n in {16, 8, 4}, hardest load first.
  rule110 depo gsm  the reproduction study at CPU scale, 3 seeds each.
  eval_n rules reset reinject truncation compute_matched bounds
                    beyond the paper, on recall:capacity, 3 seeds each (share their runs
                    with the main job through --runs_dir).
"""

from ml_collections import ConfigDict, config_dict

_RECALL = "experiments/configs/recall.py"


def _tuples(x):
    """Lists -> tuples, so that the command line can override them (--sweep.seeds=0,1,2)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def _sweep(config, axes, seeds, config_arg="", fixed=None, **extra):
    c = ConfigDict()
    c.config = config
    c.config_arg = config_arg
    # Dotted keys name task knobs (task.window); ConfigDict refuses them unless told.
    c.axes = ConfigDict({k: _tuples(v) for k, v in axes.items()}, allow_dotted_keys=True)
    c.fixed = ConfigDict({k: _tuples(v) for k, v in (fixed or {}).items()}, allow_dotted_keys=True)
    c.seeds = _tuples(seeds)
    # Seeds decided before they run that confirm the verdict: the report says "helps" or
    # "hurts" only if the paired interval excludes 0 on `seeds` and on these alike.
    c.confirm_seeds = _tuples(extra.pop("confirm_seeds", ()))
    c.parallel = 2
    c.frontier = config_dict.placeholder(float)  # set: also tabulate the depth frontier
    c.est_run_s = config_dict.placeholder(float)  # seconds per run, for the first ETA
    # Set whole: ConfigDict.update would merge a given baseline into this default.
    c.baseline = ConfigDict(
        {k: _tuples(v) for k, v in extra.pop("baseline", {"passes": 1}).items()},
        allow_dotted_keys=True,
    )
    c.x_field = "passes"
    c.metric = "acc"
    c.interval = "t"  # the report's 95% interval: "t" (paired t) or "bootstrap"
    c.update(extra)
    return c


def tiny():
    return _sweep(
        "experiments/configs/recall.py",
        {"passes": [1, 2]},
        seeds=[0],
        config_arg="tiny",
        est_run_s=30.0,
        fixed={
            "steps": 20,
            "eval_every": 20,
            "log_every": 5,  # two lines before the end: the progress view shows s/step
            "checkpoint_every": 20,
            "eval_size": 64,
        },
    )


def main_2000():
    """The main job until 2026-12-02: N in {1, 2, 4} x 2 paired seeds on recall:capacity at a
    fixed 2000 steps (n in {4, 8, 16} mixed). Kept to reproduce results/superseded/main_2000/;
    its "more passes help" did not replicate on further seeds (results/RESULTS.md).

    6 runs, 2 at a time (one per core); about 11 min on a 2-core CPU.
    """
    return _sweep(
        _RECALL, {"passes": [1, 2, 4]}, seeds=[0, 1], config_arg="capacity", est_run_s=220.0
    )


# --- convergence-grade evidence: the capacity map and the main-job slice -------
# Every run trains to convergence under the stopping rule (sleep_consolidation/training/stopping.py;
# its metric is the default, eval/acc, which also keeps a "/" out of the run names):
# evaluated every 250 steps, it stops once eval/acc has not beaten its earlier best by more
# than 0.005 over the last 4 evals, never below eval/acc 0.5 and never before step 2000
# (at n = 32 a run sits on a loss plateau near chance for ~1500 steps before it learns,
# and a flat stretch there is not convergence), capped at 6000 steps (a run that hits the
# cap is flagged unconverged in the report). One load per model. The window is 2n, so the
# pairs fill the first window exactly and a step costs in proportion to the load (T = 4n):
# the fast weights see the same n pairs whatever the padding, and a fixed window 64 made
# the map cost ~20 h on 2 cores. A run of the same config is found by its config.json, so
# the sweeps share their runs through --runs_dir.

CAPACITY_LOADS = (4, 8, 16, 32)  # pairs n against head dimension d_k = 16: n/d_k 0.25..2
PLATEAU_FLOOR = 0.5  # eval/acc below it: still on the loss plateau (~0.09 here), not converged
CONVERGED = {
    "steps": 6000,
    "eval_every": 250,
    "checkpoint_every": 500,
    "eval_passes": (),  # the eval at extra N would cost ~10% of the run at this eval cadence
    "stop_patience": 4,
    "stop_min_delta": 0.005,
    "stop_min_steps": 2000,
    # ... and never while eval/acc is still below 0.5: a run on the plateau (~0.09 here) is
    # flat but has not converged (n=16, N=4 seeds 1-2 "converged" at 0.17 and 0.09 without
    # this floor); it trains on to the cap and is flagged unconverged if it never gets there.
    "stop_min_value": PLATEAU_FLOOR,
}


def _load_axis(loads):
    """The zipped (num_pairs_values, window) axis: one load per model, window 2n."""
    return {"task.num_pairs_values+task.window": [((n,), 2 * n) for n in loads]}


def _converged(loads, passes, est_run_s):
    """recall:capacity at these loads (window 2n) x N, seeds 0-4, under the stopping rule."""
    axes = {**_load_axis(loads), "passes": list(passes)}
    return _sweep(
        _RECALL, axes, seeds=[0, 1, 2, 3, 4], config_arg="capacity", fixed=dict(CONVERGED),
        est_run_s=est_run_s,
    )  # fmt: skip


def capacity_map():
    """The capacity map: recall after eviction at n in {4, 8, 16, 32} pairs (head dimension
    16, window 2n) x N in {1, 2, 4}, 5 paired seeds, each run to convergence. 60 runs,
    about 3 core-hours on the 2-core CPU (experiments/capacity_map.py reports it).

    Report: converged accuracy and paired gain over N=1 per (n, N), with 95% intervals; set
    beside `sleep_consolidation.analysis.capacity` (the no-learning delta rule).
    """
    return _converged(CAPACITY_LOADS, [1, 2, 4], est_run_s=200.0)


def main():
    """The README's main job: the capacity map's slice n = 8 pairs (window 16, half the head
    dimension) x N in {1, 4} x 5 paired seeds, each trained to convergence under the
    stopping rule above (its runs are capacity_map's). 10 runs, 2 at a time; the largest
    slice whose runs fit 15 min on 2 cores (n = 16 takes ~30 min: main_converged). Prints
    the table with 95% paired intervals and a one-line verdict.
    """
    return _converged([8], [1, 4], est_run_s=150.0)


def capacity_map_low():
    """The capacity map's loads n in {4, 8, 16} x N in {1, 2, 4} x 5 seeds (45 runs, 10 of
    them main_converged's): the part of the map run first, cheapest loads first."""
    return _converged(CAPACITY_LOADS[:3], [1, 2, 4], est_run_s=150.0)


def capacity_map_high():
    """The capacity map's hardest load, n = 32 = 2 d_k (window 64), x N in {1, 2, 4} x 5
    seeds, in that order (N = 4 here costs ~16 core-minutes a run)."""
    return _converged(CAPACITY_LOADS[3:], [1, 2, 4], est_run_s=600.0)


def capacity_map_n8():
    """The capacity map's N = 8 column at n in {16, 8, 4} x 5 seeds, hardest load first (its
    N = 1 pairs are capacity_map's runs). N = 8 costs about twice N = 4: ~18 core-minutes a
    run at n = 16. Does more sleep deepen the failures N = 2 and 4 showed at n = d_k?"""
    return _converged([16, 8, 4], [8], est_run_s=700.0)


def main_converged():
    """The main-job candidate: the capacity map's load at the head dimension (n = 16 = d_k)
    x N in {1, 4} x 5 paired seeds, to convergence (its runs are capacity_map's). 10 runs."""
    return _converged([16], [1, 4], est_run_s=170.0)


def converged_pilot():
    """A first convergence-grade slice that fits a session: the README main job's config
    (recall:capacity, n in {4, 8, 16} mixed per example, window 32) at N in {1, 4} x 5
    paired seeds, each run until eval/acc stops improving (patience 4 evals of 250 steps,
    delta 0.005, never before step 1000, cap 5000). 10 runs; about 40 min on one core."""
    fixed = dict(
        steps=5000, eval_every=250, checkpoint_every=500, eval_passes=(), stop_patience=4,
        stop_min_delta=0.005, stop_min_steps=1000,
    )  # fmt: skip
    return _sweep(
        _RECALL, {"passes": [1, 4]}, seeds=[0, 1, 2, 3, 4], config_arg="capacity", fixed=fixed,
        est_run_s=240.0,
    )  # fmt: skip


# --- reproduction study at CPU scale (3 seeds each) -------------------------------------


def rule110():
    """Rule 110 (4 states x 8 bits, t in {1,2,3,4} per example): accuracy vs t at every N."""
    return _sweep(
        "experiments/configs/rule110.py", {"passes": [1, 2, 4]}, seeds=[0, 1, 2], config_arg="cpu"
    )


# --- the depth ladder (Rule 110 beyond memorisation; results/RESULTS.md "Depth") ---------
# rule110.py:depth: 4 states of 16 bits (window 16), one t per model (bit 0 after t steps
# depends on 2t + 1 bits: at t >= 5, more than 2000 patterns), 4 blocks attn-GDN-attn-GDN
# at d = 32, trained under the capacity map's stopping rule (eval/acc floor 0.5: a run
# that stays near the constant answer trains to the 6000-step cap and is flagged capped).
# t = 0 is the retrieval-only control: each state's own first bit, no computation.

DEPTH_LADDER = (0, 1, 2, 4, 6, 8)


def _depth_axis(ts):
    return {"task.t_values": [(t,) for t in ts]}


def rule110_search():
    """Step 1 of the ladder: N = 1 alone on seeds 0-1 at t in {0, 1, 2, 4, 6, 8}, to find
    t*, the shallowest t at which N = 1 stays near the constant answer while a shallower t
    is learned. Compared with the t = 0 control (retrieval only). ~8 min a capped run on
    one core; 12 runs."""
    return _sweep(
        "experiments/configs/rule110.py", _depth_axis(DEPTH_LADDER), seeds=[0, 1],
        config_arg="depth", fixed=dict(CONVERGED), baseline={"task.t_values": (0,)},
        x_field="task.t_values", est_run_s=400.0,
    )  # fmt: skip


def rule110_search_deep():
    """The t* search continued deeper (decided at 22:48 UTC 2026-12-03, before any t >= 6
    result, once N = 1 had learned t = 4 on seed 0): t in {12, 16}, N = 1, seeds 0-1. Run
    only if N = 1 learns t = 8 on both seeds; shares rule110_search's --runs_dir."""
    s = rule110_search()
    s.axes = ConfigDict(_depth_axis((12, 16)), allow_dotted_keys=True)
    return s


T_STAR = 6  # from rule110_search (results/RESULTS.md "Depth"): N = 1 learns t = 4, not t = 6


def rule110_depth():
    """Step 2 of the ladder, the claim: N in {1, 4, 2} x seeds 0-4 at t* = 6 and the
    ladder's neighbours t = 4 and t = 8 (one t per model), t* first and N = 2 last, so the
    decisive comparison (N = 4 vs N = 1 at t*) is complete first. 45 runs; an N = 4 run
    costs ~3.5x an N = 1 run (~10 min capped on one core). Confirmation: rule110_confirm."""
    axes = {"task.t_values+passes": [
        ((t,), n) for t in (T_STAR, 4, 8) for n in (1, 4, 2)
    ]}  # fmt: skip
    return _sweep(
        "experiments/configs/rule110.py", axes, seeds=[0, 1, 2, 3, 4], config_arg="depth",
        fixed=dict(CONVERGED), x_field="passes", est_run_s=1200.0,
    )  # fmt: skip


def rule110_confirm():
    """The decisive comparison on confirmation seeds, decided before they run: N = 4 vs
    N = 1 at t* = 6, seeds 5-9 (BUILD_NOTES.md "The depth ladder")."""
    axes = {"task.t_values+passes": [((T_STAR,), 1), ((T_STAR,), 4)]}
    return _sweep(
        "experiments/configs/rule110.py", axes, seeds=[5, 6, 7, 8, 9], config_arg="depth",
        fixed=dict(CONVERGED), x_field="passes", est_run_s=1200.0,
    )  # fmt: skip


# N = 4's training FLOPs over N = 1's at rule110.py:depth, t = 6 (experiments/bench/flops.py
# `model_flops_per_step`: 3.82x); the compute-matched N = 1 gets that many more steps.
COMPUTE_MATCHED_STEPS = 23_000  # 6000 x 3.82, rounded up to an eval


def rule110_controls():
    """Step 2's controls at t* (seeds 0-4): N = 1 given N = 4's training FLOPs as more
    steps (cap 23000 instead of 6000, same stopping rule), and attention only (4 attention
    blocks) under hard eviction, which can answer from nothing but the query window: the
    chance floor. Online depth (the blocks looped at wake time too) needs a model option
    not built yet."""
    axes = {"steps+layout": [
        (COMPUTE_MATCHED_STEPS, ("attn", "ssm", "attn", "ssm")),
        (6000, ("attn", "attn", "attn", "attn")),
    ]}  # fmt: skip
    return _sweep(
        "experiments/configs/rule110.py", axes, seeds=[0, 1, 2, 3, 4], config_arg="depth",
        fixed={**CONVERGED, "task.t_values": (T_STAR,)}, x_field="layout",
        baseline={"steps": 6000, "layout": ("attn", "ssm", "attn", "ssm")}, est_run_s=1500.0,
    )  # fmt: skip


def depo_search():
    """The Depo hop search (seeds 0-1, N = 1): is there a CPU size at which N = 1 learns
    k = 1, 2 hops and fails k >= 4, so that the frontier can move with N? depo.py:cpu
    (8-node cycles, 1-token names, k ~ U{1..4} per query) with the paper's 4-block layout
    against the 2-block one, and a wider model (d = 64), each to the 6000-step cap under
    the stopping rule without its 0.5 floor (accuracy is mixed over k). 6 runs."""
    fixed = {**CONVERGED, "stop_min_value": None}
    axes = {
        "layout+d_model": [
            (("attn", "ssm"), 32),
            (("attn", "ssm", "attn", "ssm"), 32),
            (("attn", "ssm", "attn", "ssm"), 64),
        ]
    }
    return _sweep(
        "experiments/configs/depo.py", axes, seeds=[0, 1], config_arg="cpu", fixed=fixed,
        baseline={"layout": ("attn", "ssm"), "d_model": 32}, x_field="d_model", frontier=0.5,
        est_run_s=600.0,
    )  # fmt: skip


def depo():
    """Depo (8-node cycles, k <= 4 hops): the hop frontier vs N (accuracy per k)."""
    return _sweep(
        "experiments/configs/depo.py", {"passes": [1, 2, 4]}, seeds=[0, 1, 2], config_arg="cpu",
        frontier=0.5,
    )  # fmt: skip


def gsm():
    """gsm (mod 7, 1-4 operations, question evicted before the answer): accuracy per op count."""
    return _sweep(
        "experiments/configs/gsm.py", {"passes": [1, 2, 4]}, seeds=[0, 1, 2], config_arg="cpu"
    )


# --- beyond the paper (recall:capacity, 3 seeds) ---------------------------------------
# Run each with --runs_dir=<the main job's workdir>/runs: a run of the same config is found by
# its config.json, so the N = 1, 2, 4 runs are shared with the main job and each other.

_SEEDS = [0, 1, 2]


def eval_n():
    """Train-N vs eval-N: train at N in {1, 2, 4}; every run is also evaluated at N in
    {1, 2, 4, 8} (recall:capacity's eval_passes; summary.json keys `N{M}/acc/d=..`)."""
    return _sweep(_RECALL, {"passes": [1, 2, 4]}, seeds=_SEEDS, config_arg="capacity")


def rules():
    """Rule ablation at N=2: the four built-in rules, against delta (the base config's)."""
    axes = {"rule": ["delta", "gated_delta", "gated_hebbian", "hebbian"], "passes": [2]}
    return _sweep(
        _RECALL, axes, seeds=_SEEDS, config_arg="capacity", baseline={"rule": "delta"},
        x_field="rule",
    )  # fmt: skip


def reset():
    """Carry vs reset of the fast weights between passes, at N=2 (N=1 is the baseline)."""
    axes = {"passes+reset_between_passes": [(1, False), (2, False), (2, True)]}
    return _sweep(
        _RECALL, axes, seeds=_SEEDS, config_arg="capacity",
        baseline={"passes": 1, "reset_between_passes": False},
    )  # fmt: skip


def reinject():
    """Embedding re-injection into every sleep pass on (the base config) vs off, at N=2."""
    axes = {"passes+reinject_embedding": [(1, True), (2, True), (2, False)]}
    return _sweep(
        _RECALL, axes, seeds=_SEEDS, config_arg="capacity",
        baseline={"passes": 1, "reinject_embedding": True},
    )  # fmt: skip


def truncation():
    """Truncated (the last pass only, k=1) vs full gradients through sleep at N=4."""
    axes = {
        "passes+estimator+grad_passes": [(1, "full", None), (4, "full", None), (4, "truncated", 1)]
    }
    return _sweep(
        _RECALL, axes, seeds=_SEEDS, config_arg="capacity",
        baseline={"passes": 1, "estimator": "full", "grad_passes": None},
    )  # fmt: skip


def compute_matched():
    """N=1 given N=4's training compute (2x the steps: the wall-time ratio of an N=4 to an
    N=1 run of the main job on this CPU, 362 s / 183 s) against N=4 at the normal budget."""
    axes = {"passes+steps": [(1, 2000), (1, 4000), (4, 2000)]}
    return _sweep(
        _RECALL, axes, seeds=_SEEDS, config_arg="capacity", baseline={"passes": 1, "steps": 2000}
    )


def bounds():
    """The two bounds: full attention that keeps its whole cache (one window = the whole
    sequence, T=64: upper bound), and attention-only under hard eviction (chance floor),
    against the hybrid at N=1 and N=2."""
    axes = {
        "layout+window+passes": [
            (("attn", "ssm"), None, 1),
            (("attn", "ssm"), None, 2),
            (("attn", "attn"), 64, 1),
            (("attn", "attn"), None, 1),
        ]
    }
    return _sweep(
        _RECALL, axes, seeds=_SEEDS, config_arg="capacity",
        baseline={"layout": ("attn", "ssm"), "window": None, "passes": 1}, x_field="window",
    )  # fmt: skip


VARIANTS = {
    "tiny": tiny,
    "main": main,
    "main_2000": main_2000,
    "converged_pilot": converged_pilot,
    "rule110": rule110,
    "rule110_search": rule110_search,
    "rule110_search_deep": rule110_search_deep,
    "rule110_depth": rule110_depth,
    "rule110_confirm": rule110_confirm,
    "rule110_controls": rule110_controls,
    "depo_search": depo_search,
    "depo": depo,
    "gsm": gsm,
    "rules": rules,
    "reset": reset,
    "reinject": reinject,
    "eval_n": eval_n,
    "truncation": truncation,
    "compute_matched": compute_matched,
    "bounds": bounds,
    "capacity_map": capacity_map,
    "main_converged": main_converged,
    "capacity_map_low": capacity_map_low,
    "capacity_map_high": capacity_map_high,
    "capacity_map_n8": capacity_map_n8,
}


def get_config(arg=None):
    name = arg or "main"
    if name not in VARIANTS:
        raise ValueError(f"unknown sweep {name!r}; known: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[name]()
