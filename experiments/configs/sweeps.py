"""Sweep declarations (for `python -m experiments.sweep --sweep=experiments/configs/sweeps.py:<name>`).

Variants:
  tiny   two points (passes 1, 2) x one seed of the tiny recall config: the test-suite smoke.
  main   the README's main job (see `main()` below for what it runs and what to expect).
"""

from ml_collections import ConfigDict


def _sweep(config, axes, seeds, config_arg="", fixed=None, **extra):
    c = ConfigDict()
    c.config = config
    c.config_arg = config_arg
    c.axes = axes
    c.fixed = fixed or {}
    c.seeds = list(seeds)
    c.parallel = 2
    c.baseline = {"passes": 1}
    c.x_field = "passes"
    c.metric = "acc"
    c.update(extra)
    return c


def tiny():
    return _sweep(
        "experiments/configs/recall.py",
        {"passes": [1, 2]},
        seeds=[0],
        config_arg="tiny",
        fixed={
            "steps": 20,
            "eval_every": 20,
            "log_every": 10,
            "checkpoint_every": 20,
            "eval_size": 64,
        },
    )


def main():
    """The README's main job: N in {1, 2, 4} x 2 paired seeds on recall:capacity.

    6 runs, 2 at a time (one per core); about 15 min on a 2-core CPU. Expected: accuracy
    falls with the number of pairs n; the question is whether N > 1 gains at large n.
    """
    return _sweep("experiments/configs/recall.py", {"passes": [1, 2, 4]}, seeds=[0, 1], config_arg="capacity")


VARIANTS = {"tiny": tiny, "main": main}


def get_config(arg=None):
    name = arg or "main"
    if name not in VARIANTS:
        raise ValueError(f"unknown sweep {name!r}; known: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[name]()
