"""Multi-query associative recall after eviction (ours; the cheapest memory probe).

Run-book:
  python -m experiments.train --config=experiments/configs/recall.py \
      --workdir=runs/recall_n2 --config.passes=2
  n in {4,8,16} key-value pairs fill window 1 and are evicted before 8 queries in window 2
  (T=64, L=32), batch 256; depth = n. Sweep --config.passes in {1,2,4}.
  Expected time: not measured on an accelerator yet; training cost grows ~linearly in N.
  Expected result: per-query accuracy (`eval/acc/d=n`; chance 1/64) falls with n; more
  passes should help most at large n.

  Tiny (CPU smoke test and CI, 20-30 s on a 2-core CPU; loss 3.20 -> 1.50, eval acc 0.48
  vs chance 0.125):
  python -m experiments.train --config=experiments/configs/recall.py:tiny --workdir=/tmp/recall

  Capacity (the README's main job, swept over N by experiments/configs/sweeps.py:main):
  n in {8, 16, 24} pairs against a fast-weight head dimension of 16 (d=32, 2 heads,
  attn+ssm, delta rule), window 48 (T=96), batch 64, 1500 AdamW steps (3e-3, cosine).
  One run takes about 2-6 min on one core of a 2-core CPU (N=1 fastest, N=4 slowest).
  python -m experiments.train --config=experiments/configs/recall.py:capacity --workdir=/tmp/cap
"""

from experiments.configs import common


def capacity():
    """More pairs than a head can hold orthogonally: where repeated delta-rule passes help."""
    c = common.base_config("recall")
    common.make_cpu(c, num_pairs_values=(8, 16, 24), window=48)
    c.rule = "delta"
    return c


def get_config(arg: str | None = None):
    if arg == "capacity":
        return capacity()
    c = common.base_config("recall")  # task knobs: the generator's defaults
    c.batch_size = 256
    c.steps = 20_000
    if common.check_arg(arg):
        common.make_tiny(
            c, num_pairs_values=(2, 4), num_keys=8, num_values=8, window=8, num_queries=4
        )
    return c
