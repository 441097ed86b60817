"""Building a sweep declaration (the ConfigDict that `python -m experiments.sweep --sweep=`
reads), and the stopping settings every convergence-grade sweep shares. The sweep files
(sweeps.py, depth_sweeps.py) build their variants with `make_sweep`.
"""

from ml_collections import ConfigDict, config_dict


def _tuples(x):
    """Lists -> tuples, so that the command line can override them (--sweep.seeds=0,1,2)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def make_sweep(config, axes, seeds, config_arg="", fixed=None, **extra):
    """A sweep of `config`:`config_arg` over `axes` (field -> values; "a+b" zips fields),
    every point on every seed, `fixed` overrides on every run; `extra` sets any other field
    (baseline, x_field, metric, frontier, est_run_s, confirm_seeds, ...)."""
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
    # Launch order: "points" (every seed of one grid point, then the next) or "seeds"
    # (every point of one seed, then the next: a sweep cut short leaves whole pairs).
    c.order = "points"
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


# Convergence-grade runs train under the stopping rule (sleep_consolidation/training/stopping.py;
# its metric is the default, eval/acc, which also keeps a "/" out of the run names):
# evaluated every 250 steps, a run stops once eval/acc has not beaten its earlier best by more
# than 0.005 over the last 4 evals, never below eval/acc 0.5 and never before step 2000
# (at n = 32 a run sits on a loss plateau near chance for ~1500 steps before it learns,
# and a flat stretch there is not convergence), capped at 6000 steps (a run that hits the
# cap is flagged unconverged in the report).

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


def pick_variant(variants: dict, arg, default: str):
    """`variants[arg or default]()`: a sweep file's `get_config`; an unknown name is refused
    with the known ones."""
    name = arg or default
    if name not in variants:
        raise ValueError(f"unknown sweep {name!r}; known: {', '.join(sorted(variants))}")
    return variants[name]()
