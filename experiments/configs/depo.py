"""Depo k-hop retrieval on a directed cycle (docs/method.md, task 2).

Run-book:
  python -m experiments.train --config=experiments/configs/depo.py \
      --workdir=runs/depo_n4 --config.passes=4
  Sweep: --config.passes in {1,2,4}. Paper scale: cycles up to 75 nodes, ~300 graph tokens,
  10 queries with k ~ U[1,16], T=360, L=75 (the graph is evicted before any query),
  batch 128, d=512 (8 heads), 4 blocks attn-GDN-attn-GDN.
  Expected time: not measured on an accelerator yet (no GPU was available); training cost
  grows ~linearly in N. Estimate from FLOPs (BUILD_NOTES.md): ~13M params x 6 x 50k steps
  x 128 x 360 tokens x N ~ 1.8e17 N FLOP; at an assumed 50-100 TFLOP/s sustained on an
  H100 that is ~0.5-1 h per unit of N.
  Expected result (paper, in shape): test loss per hop count (`eval/loss/d=k`): N=1 stalls
  for k >= 4, N=2 for k >= 8, only N=4 starts improving at k=16.

  Tiny (CPU smoke test, 20-35 s on a 2-core CPU; loss 2.79 -> 1.84, eval acc 0.29 vs
  chance 0.125):
  python -m experiments.train --config=experiments/configs/depo.py:tiny --workdir=/tmp/depo

  Training many passes (README "Training many passes"): --config.init_from=<workdir of a
  trained run, e.g. its N=1 model> starts from its parameters (fresh optimizer);
  --config.passes_ramp_steps=K ramps N linearly from 1 to passes over the first K steps;
  --config.pass_stats_size=64 logs per-pass norms and recall at every eval.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
    c = common.base_config("depo")  # task knobs: the generator's paper defaults
    c.d_model = 512  # the paper's Depo model width
    c.num_heads = 8
    c.batch_size = 128
    c.steps = 50_000
    if arg == "cpu":  # 8-node cycles, 1-token names, k <= 4: graph in 1 window, queries in the next
        common.make_cpu(
            c, max_nodes=8, min_nodes=8, name_tokens=1, alphabet=16, num_queries=4, max_hops=4,
            window=16, graph_tokens=16,
        )  # fmt: skip
    elif common.check_arg(arg):
        common.make_tiny(
            c, max_nodes=6, name_tokens=1, alphabet=8, num_queries=2, max_hops=2, window=12,
            graph_tokens=12,
        )  # fmt: skip
    return c
