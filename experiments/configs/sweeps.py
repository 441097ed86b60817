"""Sweep declarations (for `python -m experiments.sweep --sweep=experiments/configs/sweeps.py:<name>`).

Variants (each function's docstring says what it asks):
  tiny              two points (passes 1, 2) x one seed of recall:tiny: the test smoke.
  main              the README's main job: N in {1,2,4} x 2 seeds on recall:capacity.
  rule110 depo gsm  the reproduction study at CPU scale, 3 seeds each.
  rules reset reinject eval_n truncation compute_matched bounds
                    beyond the paper, on recall:capacity, 3 seeds each.
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
    return _sweep(
        "experiments/configs/recall.py", {"passes": [1, 2, 4]}, seeds=[0, 1], config_arg="capacity"
    )


# --- reproduction study at CPU scale (3 seeds each) -------------------------------------


def rule110():
    """Rule 110 (4 states x 8 bits, t in {1,2,3,4} per example): accuracy vs t at every N."""
    return _sweep(
        "experiments/configs/rule110.py", {"passes": [1, 2, 4]}, seeds=[0, 1, 2], config_arg="cpu"
    )


def depo():
    """Depo (8-node cycles, k <= 4 hops): the hop frontier vs N (accuracy per k)."""
    return _sweep(
        "experiments/configs/depo.py", {"passes": [1, 2, 4]}, seeds=[0, 1, 2], config_arg="cpu"
    )


def gsm():
    """gsm (mod 7, 1-4 operations, question evicted before the answer): accuracy per op count."""
    return _sweep(
        "experiments/configs/gsm.py", {"passes": [1, 2, 4]}, seeds=[0, 1, 2], config_arg="cpu"
    )


# --- beyond the paper (recall:capacity, 3 seeds) ---------------------------------------

_RECALL = "experiments/configs/recall.py"


def rules():
    """Rule ablation: the four built-in rules at N=1 and N=2."""
    axes = {"rule": ["gated_delta", "delta", "gated_hebbian", "hebbian"], "passes": [1, 2]}
    return _sweep(_RECALL, axes, seeds=[0, 1, 2], config_arg="capacity")


def reset():
    """Carry vs reset of the fast weights between passes (N=2, 4; N=1 is the paired baseline)."""
    axes = {
        "passes+reset_between_passes": [(1, False), (2, False), (2, True), (4, False), (4, True)]
    }
    return _sweep(
        _RECALL,
        axes,
        seeds=[0, 1, 2],
        config_arg="capacity",
        baseline={"passes": 1, "reset_between_passes": False},
    )


def reinject():
    """Embedding re-injection on vs off (N=2, 4)."""
    axes = {"passes+reinject_embedding": [(1, False), (2, False), (2, True), (4, False), (4, True)]}
    return _sweep(
        _RECALL,
        axes,
        seeds=[0, 1, 2],
        config_arg="capacity",
        baseline={"passes": 1, "reinject_embedding": False},
    )


def eval_n():
    """Train-N vs eval-N: train at N in {1, 2, 4}, evaluate at every N in {1, 2, 4, 8}
    (summary.json eval keys `N{M}/acc/d=..`)."""
    return _sweep(
        _RECALL,
        {"passes": [1, 2, 4]},
        seeds=[0, 1, 2],
        config_arg="capacity",
        fixed={"eval_passes": (1, 2, 4, 8)},
    )


def truncation():
    """Truncated vs full gradients at N=4 (grad_passes 1, 2 vs 4 = full); N=1 baseline."""
    axes = {"passes+grad_passes": [(1, 1), (4, 1), (4, 2), (4, 4)]}
    return _sweep(
        _RECALL,
        axes,
        seeds=[0, 1, 2],
        config_arg="capacity",
        baseline={"passes": 1, "grad_passes": 1},
    )


def compute_matched():
    """N=1 given N=4's training compute (3x the steps: an N=4 step costs ~3 N=1 steps on
    this CPU) against N=4 at the normal budget."""
    axes = {"passes+steps": [(1, 1500), (1, 4500), (4, 1500)]}
    return _sweep(
        _RECALL, axes, seeds=[0, 1, 2], config_arg="capacity", baseline={"passes": 1, "steps": 1500}
    )


def bounds():
    """The two bounds: full attention that keeps its whole cache (one window = the whole
    sequence: upper bound), and attention-only under hard eviction (chance floor)."""
    axes = {
        "layout+window+passes": [
            (("attn", "ssm"), 48, 1),
            (("attn", "attn"), 96, 1),
            (("attn", "attn"), 48, 1),
            (("attn", "ssm"), 48, 2),
        ]
    }
    return _sweep(
        _RECALL,
        axes,
        seeds=[0, 1, 2],
        config_arg="capacity",
        baseline={"layout": ("attn", "ssm"), "window": 48, "passes": 1},
        x_field="window",
    )


VARIANTS = {
    "tiny": tiny,
    "main": main,
    "rule110": rule110,
    "depo": depo,
    "gsm": gsm,
    "rules": rules,
    "reset": reset,
    "reinject": reinject,
    "eval_n": eval_n,
    "truncation": truncation,
    "compute_matched": compute_matched,
    "bounds": bounds,
}


def get_config(arg=None):
    name = arg or "main"
    if name not in VARIANTS:
        raise ValueError(f"unknown sweep {name!r}; known: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[name]()
