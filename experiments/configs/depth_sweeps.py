"""The Rule 110 depth ladder and the Depo hop search (results/RESULTS.md "Depth";
BUILD_NOTES.md "The depth ladder"), run as
`python -m experiments.sweep --sweep=experiments/configs/depth_sweeps.py:<name> --workdir=...`
(sweeps.py lists them too, under the same names).

Variants (each function's docstring says what it asks):
  rule110_search       step 1: N = 1 alone at t in {0, 1, 2, 4, 6, 8}, to find t*.
  rule110_search_deep  the t* search continued at t in {12, 16}.
  rule110_depth        step 2, the claim: N in {1, 4, 2} x seeds 0-4 at t* and its neighbours.
  rule110_easy         rule110_depth's t = 4 pairs (N in {1, 4}) alone, run first.
  rule110_easy_warm    the recipe study's warm start at t = 4: N in {4, 1}, each from
                       rule110_easy's N = 1 model of the same seed.
  rule110_confirm      N = 4 vs N = 1 at t* on confirmation seeds 5-9.
  rule110_controls     compute-matched N = 1 and attention-only at t*.
  rule110_attention_only  the attention-only arm of rule110_controls alone (same run names).
  rule110_sliding      sliding eviction at t = 2: N in {1, 4}, N = 4 with and without a
                       hard-eviction warm-up.
  rule110_online       N = 1 with the blocks looped 4 times at wake (online depth) at t*.
  rule110_probe        the wide retrieval control: t = 0, each query asks any of the 2t*+1
                       bits an answer at t* depends on.
  depo_search          is there a CPU size at which the Depo hop frontier can move with N?
  depo_search_long     the same 4-block sizes without the stopping rule, 12000 steps.
  depo_frontier        N in {1, 2, 4} x seeds 0-4 at depo.py:cpu, 8000 steps: does the hop
                       frontier move out from N = 1's?
  depo_frontier_confirm  its N in {1, 4} comparison on confirmation seeds 5-9.
  depo_compute_matched   N = 1 given N = 4's training FLOPs (20000 steps) against
                       depo_frontier's N = 4, seeds 0-4.
  depo_slice           the 15-minute slice: k in {1, 2}, N in {1, 4}, 4000 steps, seeds 0-4.
  depo_slice_confirm   the same on seeds 5-9.
"""

from ml_collections import ConfigDict

from experiments.configs.sweep_spec import CONVERGED, make_sweep, pick_variant

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
    return make_sweep(
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
    return make_sweep(
        "experiments/configs/rule110.py", axes, seeds=[0, 1, 2, 3, 4], config_arg="depth",
        fixed=dict(CONVERGED), x_field="passes", est_run_s=1200.0,
    )  # fmt: skip


def rule110_easy():
    """The claim sweep's t = 4 pairs (N in {1, 4}, seeds 0-4) on their own: the same runs
    as in rule110_depth (which reuses them from a shared --runs_dir), run before its N = 2
    arm so that "easy instances saturate" can be read first (N = 4 first: N = 1 at t = 4
    already ran on seeds 0-1 in the search). A reordering, not a new
    design (BUILD_NOTES.md "Reordered, not redesigned")."""
    s = rule110_depth()
    s.axes = ConfigDict({"task.t_values+passes": (((4,), 4), ((4,), 1))}, allow_dotted_keys=True)
    s.est_run_s = 1500.0
    # Seed by seed: a session that ends mid-sweep leaves whole pairs (first run on 2026-12-04
    # as blocks of seeds by hand, BUILD_NOTES "rule110_easy, decided at 22:06 UTC").
    s.order = "seeds"
    return s


# Where rule110_easy's runs are, relative to the repository root (the README's commands);
# elsewhere: --sweep.fixed.init_from=<runs_dir>/passes=1,task.t_values=(4),seed={seed}.
EASY_N1_RUN = "runs/depth/runs_easy/passes=1,task.t_values=(4),seed={seed}"


def rule110_easy_warm():
    """The recipe study's best recipe (results/RESULTS.md "Training many passes") at t = 4
    (BUILD_NOTES.md "Decided at 01:29 UTC", 2026-12-05):
    N = 4 and, as the control for the extra training, N = 1, each from the final parameters
    of rule110_easy's N = 1 run of the same seed (its checkpoints, so on the machine that
    trained it) with a fresh optimizer; the same stopping rule, cap 4000 steps. Its own
    --runs_dir: the run names are rule110_easy's (init_from is in config.json only)."""
    axes = {"task.t_values+passes": (((4,), 4), ((4,), 1))}
    return make_sweep(
        "experiments/configs/rule110.py", axes, seeds=[0, 1, 2, 3, 4], config_arg="depth",
        fixed={**CONVERGED, "steps": 4000, "init_from": EASY_N1_RUN}, x_field="passes",
        est_run_s=900.0, order="seeds",
    )  # fmt: skip


def rule110_confirm():
    """The decisive comparison on confirmation seeds, decided before they run: N = 4 vs
    N = 1 at t* = 6, seeds 5-9 (BUILD_NOTES.md "The depth ladder")."""
    axes = {"task.t_values+passes": [((T_STAR,), 1), ((T_STAR,), 4)]}
    return make_sweep(
        "experiments/configs/rule110.py", axes, seeds=[5, 6, 7, 8, 9], config_arg="depth",
        fixed=dict(CONVERGED), x_field="passes", est_run_s=1200.0,
    )  # fmt: skip


# N = 4's training FLOPs over N = 1's at rule110.py:depth, t = 6 (experiments/bench/flops.py
# `model_flops_per_step`: 3.82x); the compute-matched N = 1 gets that many more steps.
COMPUTE_MATCHED_STEPS = 23_000  # 6000 x 3.82, rounded up to an eval
ATTENTION_ONLY = ("attn", "attn", "attn", "attn")


def rule110_controls():
    """Step 2's controls at t* (seeds 0-4): N = 1 given N = 4's training FLOPs as more
    steps (cap 23000 instead of 6000, same stopping rule), and attention only (4 attention
    blocks) under hard eviction, which can answer from nothing but the query window: the
    chance floor. Online depth is `rule110_online`."""
    axes = {"steps+layout": [
        (COMPUTE_MATCHED_STEPS, ("attn", "ssm", "attn", "ssm")),
        (6000, ATTENTION_ONLY),
    ]}  # fmt: skip
    return make_sweep(
        "experiments/configs/rule110.py", axes, seeds=[0, 1, 2, 3, 4], config_arg="depth",
        fixed={**CONVERGED, "task.t_values": (T_STAR,)}, x_field="layout",
        baseline={"steps": 6000, "layout": ("attn", "ssm", "attn", "ssm")}, est_run_s=1500.0,
    )  # fmt: skip


def rule110_attention_only():
    """The attention-only arm of `rule110_controls` on its own (seeds 0-4), run first
    because the ladder counts only if it stays at the constant floor. Its runs carry the
    same names as in `rule110_controls`, so that sweep reuses them from a shared
    --runs_dir."""
    s = rule110_controls()
    s.axes = ConfigDict({"steps+layout": ((6000, ATTENTION_ONLY),)}, allow_dotted_keys=True)
    s.est_run_s = 600.0
    return s


def rule110_probe():
    """The wide retrieval control (seeds 0-4, N = 1): t = 0 with probe_radius = t* = 6,
    each query asking bit j ~ U{-6..6} of its state, so that a model must store all 13 bits
    an answer at t* depends on, for every state. If it answers them, what fails at t* is
    the computation on stored states, not their storage."""
    return make_sweep(
        "experiments/configs/rule110.py", {"task.probe_radius": [T_STAR]}, seeds=[0, 1, 2, 3, 4],
        config_arg="depth", fixed={**CONVERGED, "task.t_values": (0,)},
        x_field="task.probe_radius", baseline={"task.probe_radius": 0}, est_run_s=400.0,
    )  # fmt: skip


# The sliding-eviction study (BUILD_NOTES.md "Sliding eviction, trained: design"): t = 2,
# which N = 1 learns under hard eviction on both search seeds in 2000-2500 steps, so that
# what the study measures is whether each arm still trains once attention slides.
SLIDING_T = 2
HARD_WARMUP_STEPS = 1000


def rule110_sliding():
    """Sliding eviction trained (seeds 0-4): rule110.py:depth at t = 2 with
    eviction="sliding" (attention sees the last 16 positions across window boundaries),
    N = 4 without and with a hard-eviction warm-up of 1000 steps (the paper: crucial for
    N > 1), and N = 1 without, the reference. N = 4 arms first, so that the warm-up
    comparison is complete first."""
    axes = {"passes+hard_eviction_steps": [(4, 0), (4, HARD_WARMUP_STEPS), (1, 0)]}
    return make_sweep(
        "experiments/configs/rule110.py", axes, seeds=[0, 1, 2, 3, 4], config_arg="depth",
        fixed={**CONVERGED, "task.t_values": (SLIDING_T,), "eviction": "sliding"},
        x_field="passes", baseline={"passes": 4, "hard_eviction_steps": 0},
        est_run_s=1500.0,
    )  # fmt: skip


def rule110_online():
    """The online-depth control at t* (seeds 0-4): N = 1 with the blocks looped 4 times at
    wake on every token (`wake_passes=4`, each run from the window's incoming fast weights),
    the depth that N = 4 spends offline spent online instead, at 4x the wake cost. Paired
    with `rule110_depth`'s N = 4 and N = 1 runs of the same seeds."""
    axes = {"wake_passes": [4]}
    return make_sweep(
        "experiments/configs/rule110.py", axes, seeds=[0, 1, 2, 3, 4], config_arg="depth",
        fixed={**CONVERGED, "task.t_values": (T_STAR,)}, x_field="wake_passes",
        est_run_s=4000.0,
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
    return make_sweep(
        "experiments/configs/depo.py", axes, seeds=[0, 1], config_arg="cpu", fixed=fixed,
        baseline={"layout": ("attn", "ssm"), "d_model": 32}, x_field="d_model", frontier=0.5,
        est_run_s=600.0,
    )  # fmt: skip


FOUR_BLOCKS = ("attn", "ssm", "attn", "ssm")


def depo_search_long():
    """The Depo search's 4-block sizes again without the stopping rule, to a 12000-step cap
    (decided after depo_search's 4-block d = 32 seed 0 stopped at step 4250 while still
    rising: 0.334, 0.391, 0.395 over its last evals). N = 1, seeds 0-1; 4 runs."""
    s = depo_search()
    s.axes = ConfigDict(
        {"layout+d_model": ((FOUR_BLOCKS, 32), (FOUR_BLOCKS, 64))},
        allow_dotted_keys=True,
    )  # fmt: skip
    s.fixed = ConfigDict({"steps": 12_000, "eval_every": 250, "checkpoint_every": 500,
                          "eval_passes": ()})  # fmt: skip
    s.baseline = ConfigDict({"d_model": 32})
    s.est_run_s = 900.0
    return s


DEPO_FRONTIER_STEPS = 8000


def depo_frontier():
    """Does the hop frontier move out with N? (Decided before any N > 1 Depo run at this
    size: BUILD_NOTES.md "The Depo search extended".) depo.py:cpu as it is (8-node cycles,
    1-token names, k ~ U{1..4}, attn+GDN at d = 32), where N = 1 learns k = 1 and not k = 2
    on both search seeds; N in {1, 4, 2} x seeds 0-4, a fixed 8000 steps for every N (no
    stopping rule: accuracy mixed over k never reaches a floor, and a flat stretch at k = 2
    is not convergence), so the report reads "after 8000 steps". N = 4 before N = 2, so
    that the decisive pairs finish first. Frontier threshold 0.5 per k."""
    axes = {"passes": [1, 4, 2]}
    return make_sweep(
        "experiments/configs/depo.py", axes, seeds=[0, 1, 2, 3, 4], config_arg="cpu",
        fixed={"steps": DEPO_FRONTIER_STEPS, "eval_every": 250, "checkpoint_every": 500,
               "eval_passes": ()},
        x_field="passes", frontier=0.5, est_run_s=900.0,
    )  # fmt: skip


def depo_frontier_confirm():
    """The frontier test's confirmation (decided at 13:55 UTC 2026-12-04, once depo_frontier
    saw N = 4 - N = 1 at k = 2 above 0 on seeds 0-4, before any of these runs: BUILD_NOTES.md
    "The Depo frontier's decisive comparison"): depo_frontier's config, N in {1, 4}, seeds
    5-9, N = 1 first."""
    s = depo_frontier()
    s.axes = ConfigDict({"passes": [1, 4]})
    s.seeds = (5, 6, 7, 8, 9)
    return s


# N = 4's training FLOPs over N = 1's at depo.py:cpu (experiments/bench/flops.py
# `model_flops_per_step`: 2.495x; only the ssm blocks are looped, and attention and the
# readout run once), so the compute-matched N = 1 gets 8000 x 2.5 steps.
DEPO_COMPUTE_MATCHED_STEPS = 20_000


def depo_compute_matched():
    """Is the Depo frontier gain more than compute? (Decided before it ran: BUILD_NOTES.md
    "The Depo compute-matched control".) N = 1 given N = 4's training FLOPs as more steps
    (20000 instead of 8000, the same recipe otherwise), seeds 0-4, paired with
    depo_frontier's N = 4 and N = 1 runs of the same seeds, which it reuses from a shared
    --runs_dir (a run is found by its config). Baseline: the compute-matched N = 1."""
    s = depo_frontier()
    s.axes = ConfigDict(
        {"passes+steps": ((1, DEPO_COMPUTE_MATCHED_STEPS), (4, DEPO_FRONTIER_STEPS),
                          (1, DEPO_FRONTIER_STEPS))},
        allow_dotted_keys=True,
    )  # fmt: skip
    del s.fixed["steps"]
    s.baseline = ConfigDict({"passes": 1, "steps": DEPO_COMPUTE_MATCHED_STEPS})
    s.x_field = "steps"
    s.est_run_s = 500.0
    return s


# The 15-minute Depo slice (BUILD_NOTES.md "A 15-minute Depo main job?"): depo.py:cpu
# trained on k in {1, 2} only, so that half the queries are the 2-hop ones the slice tests,
# for 4000 steps, which 5 seeds x N in {1, 4} fit in 15 min on 2 cores (evals at 2000 and
# 4000 only; micro-batches of 32, ~12% faster here than 16; same step up to rounding).
DEPO_SLICE_STEPS = 4000


def depo_slice():
    """Does N = 4 answer 2-hop queries that N = 1 cannot, in a 15-minute run? (Decided before
    it ran: BUILD_NOTES.md "A 15-minute Depo main job?".) depo.py:cpu with k in {1, 2}, N in
    {1, 4} x seeds 0-4, a fixed 4000 steps; the verdict reads accuracy on the 2-hop queries
    (acc/d=2). 10 runs, 2 at a time."""
    return make_sweep(
        "experiments/configs/depo.py", {"passes": [1, 4]}, seeds=[0, 1, 2, 3, 4],
        config_arg="cpu",
        fixed={"steps": DEPO_SLICE_STEPS, "task.max_hops": 2, "eval_every": 2000,
               "checkpoint_every": 1000, "eval_passes": (), "microbatches": 2},
        x_field="passes", metric="acc/d=2", frontier=0.5, est_run_s=200.0,
    )  # fmt: skip


def depo_slice_confirm():
    """depo_slice on the confirmation seeds 5-9, decided before they ran."""
    s = depo_slice()
    s.seeds = (5, 6, 7, 8, 9)
    return s


VARIANTS = {
    "rule110_search": rule110_search,
    "rule110_search_deep": rule110_search_deep,
    "rule110_depth": rule110_depth,
    "rule110_easy": rule110_easy,
    "rule110_easy_warm": rule110_easy_warm,
    "rule110_confirm": rule110_confirm,
    "rule110_controls": rule110_controls,
    "rule110_attention_only": rule110_attention_only,
    "rule110_sliding": rule110_sliding,
    "rule110_online": rule110_online,
    "rule110_probe": rule110_probe,
    "depo_search": depo_search,
    "depo_search_long": depo_search_long,
    "depo_frontier": depo_frontier,
    "depo_frontier_confirm": depo_frontier_confirm,
    "depo_compute_matched": depo_compute_matched,
    "depo_slice": depo_slice,
    "depo_slice_confirm": depo_slice_confirm,
}


def get_config(arg=None):
    return pick_variant(VARIANTS, arg, "rule110_depth")
