"""Meta-learning the local rule: rule="parametric" (Hebbian init) trained through sleep.

The rule's coefficients (sleep_consolidation/rules/parametric.py: decay, write, write gate,
erase, erase gate per head) are ordinary parameters; the outer loop learns them with the
slow weights, AdamW at `theta_learning_rate` (fixed) so they move. `theta.jsonl` in the
workdir logs them (and the nearest built-in rule) at step 0 and every eval.

Run-book (variants after the colon: "" recall, "depo", "meta", each optionally ",tiny"):
  python -m experiments.train --config=experiments/configs/parametric.py \
      --workdir=runs/param_recall --config.passes=2
  The model, optimizer and task of recall.py with rule="parametric" (chunked form).
  Expected time: not measured on an accelerator yet. Expected result: not measured at
  this scale. (Paper-size Depo: depo.py with --config.rule=parametric
  --config.theta_learning_rate=0.003.)

  depo: depo.py:cpu (8-node cycles, k <= 4 hops, d=32, 1500 AdamW steps) at N=2, ~1 min
  per run on one core: python -m experiments.meta_rule --variant=depo \
      --out=results/meta_rule_depo --runs=runs/meta_rule_depo

  meta: the size of experiments/meta_rule.py (recall, n in {2, 4, 6} pairs, d=32,
  attn+ssm, N=2, 1500 AdamW steps): ~30-40 s per run on one core of a 2-core CPU.
  taskset -c 1 python -m experiments.meta_rule --out=results/meta_rule   (3 seeds x 5 rules,
  7.6 min; a sweep over `rule` through experiments/sweeping: --dry_run lists the runs,
  --parallel=2 without taskset runs one per core, --launcher=slurm goes to a cluster).
  Result (results/meta_rule/summary.md): eval acc 1.000 +- 0.000 (delta 0.998,
  hebbian 0.991, gated_hebbian 0.90, gated_delta 0.86); in every seed one head grows a
  delta-style erase (c_erase ~0.5) and c_decay turns slightly negative.

  Tiny (CPU smoke test, ~20-40 s on a 2-core CPU):
  python -m experiments.train --config=experiments/configs/parametric.py:tiny \
      --workdir=/tmp/param
  python -m experiments.train --config=experiments/configs/parametric.py:depo,tiny \
      --workdir=/tmp/param_depo

  Training many passes (README "Training many passes"): --config.init_from=<workdir of a
  trained run, e.g. its N=1 model> starts from its parameters (fresh optimizer);
  --config.passes_ramp_steps=K ramps N linearly from 1 to passes over the first K steps;
  --config.pass_stats_size=64 logs per-pass norms and recall at every eval.
"""

from __future__ import annotations

import re

from ml_collections import ConfigDict

from experiments.configs import common, depo, recall

THETA_LR = 3e-3  # Adam on O(1) coefficients: up to ~0.003 per step


def meta() -> ConfigDict:
    """Recall at a size where 3 seeds x 5 rules fit in ~25 CPU minutes (meta_rule.py)."""
    c = common.base_config(
        "recall", num_pairs_values=(2, 4, 6), num_keys=16, num_values=16, window=12,
        num_queries=4,
    )  # fmt: skip
    c.rule = "parametric"
    c.d_model = 32
    c.num_heads = 2
    c.layout = ("attn", "ssm")
    c.mlp_ratio = 2
    c.impl = "scan"
    c.passes = 2
    c.optimizer = "adamw"
    c.learning_rate = 3e-3
    c.lr_schedule = "cosine"
    c.warmup_steps = 50
    c.theta_learning_rate = THETA_LR
    c.batch_size = 32
    c.steps = 1500
    c.log_every = 50
    c.eval_every = 100
    c.eval_size = 512
    c.eval_batch_size = 512
    c.checkpoint_every = 1500
    c.keep_checkpoints = 1
    return c


def get_config(arg: str | None = None):
    parts = [p for p in re.split(r"[,:]", arg or "") if p]
    unknown = set(parts) - {"depo", "meta", "tiny"}
    if unknown or len(parts) != len(set(parts)) or {"depo", "meta"} <= set(parts):
        raise ValueError(
            f"unknown config variant {arg!r}; use '', 'depo' or 'meta', optionally with "
            "',tiny' (e.g. parametric.py:depo,tiny)"
        )
    tiny = "tiny" in parts
    if "meta" in parts:
        c = meta()
        if tiny:
            c.update(
                steps=100, eval_every=50, eval_size=128, eval_batch_size=128, checkpoint_every=100
            )
        return c
    if "depo" in parts:  # the CPU reproduction size (depo.py:cpu) at N=2
        c = depo.get_config("tiny" if tiny else "cpu")
        c.passes = 2
    else:
        c = recall.get_config("tiny" if tiny else None)
    c.rule = "parametric"
    c.theta_learning_rate = THETA_LR
    return c
