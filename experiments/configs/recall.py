"""Multi-query associative recall after eviction (ours; the cheapest memory probe).

Run-book:
  python -m experiments.train --config=experiments/configs/recall.py \
      --workdir=runs/recall_n2 --config.passes=2
  n in {4,8,16} key-value pairs fill window 1 and are evicted before 8 queries in window 2
  (T=64, L=32), batch 256; depth = n. Sweep --config.passes in {1,2,4}.
  Expected time: not measured on an accelerator yet; training cost grows ~linearly in N.
  Expected result: per-query accuracy (`eval/acc/d=n`; chance 1/64) falls with n. More
  passes were expected to help most at large n; measured on the capacity config, they do
  not: from scratch N = 4 often stays on the loss plateau at n >= 16, and warm-started
  from N = 1 it ends level with N = 1 given the same steps at n = 8, 16 and 32 (results/
  RESULTS.md "Training many passes: the recipe study").

  Tiny (CPU smoke test and CI, 20-30 s on a 2-core CPU; loss 3.20 -> 1.50, eval acc 0.48
  vs chance 0.125):
  python -m experiments.train --config=experiments/configs/recall.py:tiny --workdir=/tmp/recall

  Capacity (the README's main job until 2026-12-02, swept over N by sweeps.py:main_2000;
  its n = 8 slice trained to convergence was the main job until 2026-12-04, sweeps.py:main_recall):
  n in {4, 8, 16} pairs against a fast-weight head dimension of 16 (d=32, 2 heads,
  attn+ssm, delta rule, MLP ratio 4), window 32 (T=64), batch 64, 2000 AdamW steps at a
  constant 3e-3 without clipping, embedding re-injected into every sleep pass (without it
  N > 1 learns much more slowly than N = 1 at this budget: BUILD_NOTES.md, "Finding a CPU
  configuration where passes help"), and
  evaluated at N in {1, 2, 4, 8} besides the training N. One run takes about 2.5 min (N=1)
  to 5 min (N=4) on one core of a 2-core CPU.
  python -m experiments.train --config=experiments/configs/recall.py:capacity --workdir=/tmp/cap
  The sweep over N (add --dry_run to list its 6 runs and the estimated time):
  python -m experiments.sweep --sweep=experiments/configs/sweeps.py:main_2000 --workdir=runs/main

  Training many passes (README "Training many passes"): --config.init_from=<workdir of a
  trained run, e.g. its N=1 model> starts from its parameters (fresh optimizer);
  --config.passes_ramp_steps=K ramps N linearly from 1 to passes over the first K steps;
  --config.pass_stats_size=64 logs per-pass norms and recall at every eval.
"""

from experiments.configs import common


def capacity():
    """About as many pairs as a head has dimensions: where repeated delta-rule passes help."""
    c = common.base_config("recall")
    common.make_cpu(c, num_pairs_values=(4, 8, 16), window=32)
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
