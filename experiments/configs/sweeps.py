"""Sweep declarations, run as
`python -m experiments.sweep --sweep=experiments/configs/sweeps.py:<name> --workdir=...`
(add --dry_run to list the runs and the estimated time first; --launcher=slurm on a cluster).
Every field is overridable: --sweep.seeds=0,1,2 --sweep.axes.passes=1,8 --sweep.parallel=1.

Variants (each function's docstring says what it asks):
  tiny              two points (passes 1, 2) x one seed of recall:tiny: the test smoke.
  main              the README's main job: Depo 2-hop retrieval, N in {1,4} x 5 seeds, 4000
                    steps (depth_sweeps.py:depo_slice).
  main_recall       the main job until 2026-12-04: recall, n = 8 pairs x N in {1,4} x 5 seeds,
                    to convergence.
  main_2000         the main job until 2026-12-02: N in {1,2,4} x 2 seeds, 2000 steps.
  capacity_map      n in {4,8,16,32} pairs x N in {1,2,4} x 5 seeds, to convergence.
  main_converged    its load n = d_k = 16 x N in {1,4} x 5 seeds (~30 min on 2 cores).
  capacity_map_low / capacity_map_high   the map in two parts: n <= 16, and n = 32.
  capacity_map_n8   the map's N = 8 column at n in {16, 8, 4}, hardest load first.
  rule110 depo gsm  the reproduction study at CPU scale, 3 seeds each.
  rule110_* depo_*  the Rule 110 depth ladder, its controls, sliding eviction and the Depo
                    hop search and frontier: depth_sweeps.py lists them.
  eval_n rules reset reinject truncation compute_matched bounds
                    beyond the paper, on recall:capacity, 3 seeds each (share their runs
                    with the main job through --runs_dir).
"""

from experiments.configs.depth_sweeps import VARIANTS as DEPTH_VARIANTS
from experiments.configs.depth_sweeps import depo_slice
from experiments.configs.sweep_spec import CONVERGED, make_sweep, pick_variant

_RECALL = "experiments/configs/recall.py"


def tiny():
    return make_sweep(
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
    return make_sweep(
        _RECALL, {"passes": [1, 2, 4]}, seeds=[0, 1], config_arg="capacity", est_run_s=220.0
    )


# --- convergence-grade evidence: the capacity map and the main-job slice -------
# Every run trains to convergence under the stopping rule (`CONVERGED`, sweep_spec.py). One
# load per model. The window is 2n, so the pairs fill the first window exactly and a step
# costs in proportion to the load (T = 4n): the fast weights see the same n pairs whatever
# the padding, and a fixed window 64 made the map cost ~20 h on 2 cores. A run of the same
# config is found by its config.json, so the sweeps share their runs through --runs_dir.

CAPACITY_LOADS = (4, 8, 16, 32)  # pairs n against head dimension d_k = 16: n/d_k 0.25..2


def _load_axis(loads):
    """The zipped (num_pairs_values, window) axis: one load per model, window 2n."""
    return {"task.num_pairs_values+task.window": [((n,), 2 * n) for n in loads]}


def _converged(loads, passes, est_run_s):
    """recall:capacity at these loads (window 2n) x N, seeds 0-4, under the stopping rule."""
    axes = {**_load_axis(loads), "passes": list(passes)}
    return make_sweep(
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


def main_recall():
    """The README's main job until 2026-12-04 (named `main` until then): the capacity map's
    slice n = 8 pairs (window 16, half the head dimension) x N in {1, 4} x 5 paired seeds,
    each trained to convergence under the stopping rule above (its runs are capacity_map's).
    10 runs, 2 at a time, ~10-15 min on 2 cores. Its verdict is "no effect shown" (it flips
    between machines: results/RESULTS.md "The main job on two machines").
    """
    return _converged([8], [1, 4], est_run_s=150.0)


def main():
    """The README's main job: Depo 2-hop retrieval after eviction, N in {1, 4} x seeds 0-4,
    4000 steps (`depth_sweeps.depo_slice`: the Depo hop-frontier claim's 15-minute slice;
    confirmed on seeds 5-9 by `depo_slice_confirm`). Prints the table with 95% paired
    intervals and a one-line verdict; add --sweep.confirm_seeds=5,6,7,8,9 (10 more runs)
    for the verdict over both seed sets."""
    return depo_slice()


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
    return make_sweep(
        _RECALL, {"passes": [1, 4]}, seeds=[0, 1, 2, 3, 4], config_arg="capacity", fixed=fixed,
        est_run_s=240.0,
    )  # fmt: skip


# --- reproduction study at CPU scale (3 seeds each) -------------------------------------


def rule110():
    """Rule 110 (4 states x 8 bits, t in {1,2,3,4} per example): accuracy vs t at every N."""
    return make_sweep(
        "experiments/configs/rule110.py", {"passes": [1, 2, 4]}, seeds=[0, 1, 2], config_arg="cpu"
    )


# The depth ladder (rule110_*) and the Depo search (depo_*) are declared in depth_sweeps.py;
# their VARIANTS join this file's below, so that `sweeps.py:<name>` runs them too.


def depo():
    """Depo (8-node cycles, k <= 4 hops): the hop frontier vs N (accuracy per k)."""
    return make_sweep(
        "experiments/configs/depo.py", {"passes": [1, 2, 4]}, seeds=[0, 1, 2], config_arg="cpu",
        frontier=0.5,
    )  # fmt: skip


def gsm():
    """gsm (mod 7, 1-4 operations, question evicted before the answer): accuracy per op count."""
    return make_sweep(
        "experiments/configs/gsm.py", {"passes": [1, 2, 4]}, seeds=[0, 1, 2], config_arg="cpu"
    )


# --- beyond the paper (recall:capacity, 3 seeds) ---------------------------------------
# Run each with --runs_dir=<the main job's workdir>/runs: a run of the same config is found by
# its config.json, so the N = 1, 2, 4 runs are shared with the main job and each other.

_SEEDS = [0, 1, 2]


def eval_n():
    """Train-N vs eval-N: train at N in {1, 2, 4}; every run is also evaluated at N in
    {1, 2, 4, 8} (recall:capacity's eval_passes; summary.json keys `N{M}/acc/d=..`)."""
    return make_sweep(_RECALL, {"passes": [1, 2, 4]}, seeds=_SEEDS, config_arg="capacity")


def rules():
    """Rule ablation at N=2: the four built-in rules, against delta (the base config's)."""
    axes = {"rule": ["delta", "gated_delta", "gated_hebbian", "hebbian"], "passes": [2]}
    return make_sweep(
        _RECALL, axes, seeds=_SEEDS, config_arg="capacity", baseline={"rule": "delta"},
        x_field="rule",
    )  # fmt: skip


def reset():
    """Carry vs reset of the fast weights between passes, at N=2 (N=1 is the baseline)."""
    axes = {"passes+reset_between_passes": [(1, False), (2, False), (2, True)]}
    return make_sweep(
        _RECALL, axes, seeds=_SEEDS, config_arg="capacity",
        baseline={"passes": 1, "reset_between_passes": False},
    )  # fmt: skip


def reinject():
    """Embedding re-injection into every sleep pass on (the base config) vs off, at N=2."""
    axes = {"passes+reinject_embedding": [(1, True), (2, True), (2, False)]}
    return make_sweep(
        _RECALL, axes, seeds=_SEEDS, config_arg="capacity",
        baseline={"passes": 1, "reinject_embedding": True},
    )  # fmt: skip


def truncation():
    """Truncated (the last pass only, k=1) vs full gradients through sleep at N=4."""
    axes = {
        "passes+estimator+grad_passes": [(1, "full", None), (4, "full", None), (4, "truncated", 1)]
    }
    return make_sweep(
        _RECALL, axes, seeds=_SEEDS, config_arg="capacity",
        baseline={"passes": 1, "estimator": "full", "grad_passes": None},
    )  # fmt: skip


def compute_matched():
    """N=1 given N=4's training compute (2x the steps: the wall-time ratio of an N=4 to an
    N=1 run of the main job on this CPU, 362 s / 183 s) against N=4 at the normal budget."""
    axes = {"passes+steps": [(1, 2000), (1, 4000), (4, 2000)]}
    return make_sweep(
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
    return make_sweep(
        _RECALL, axes, seeds=_SEEDS, config_arg="capacity",
        baseline={"layout": ("attn", "ssm"), "window": None, "passes": 1}, x_field="window",
    )  # fmt: skip


VARIANTS = {
    "tiny": tiny,
    "main": main,
    "main_recall": main_recall,
    "main_2000": main_2000,
    "converged_pilot": converged_pilot,
    "rule110": rule110,
    **DEPTH_VARIANTS,  # the depth ladder and the Depo search, in depth_sweeps.py's order
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
    return pick_variant(VARIANTS, arg, "main")
