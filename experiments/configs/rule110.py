"""Rule 110 cellular automaton (docs/method.md, task 1).

Run-book:
  python -m experiments.train --config=experiments/configs/rule110.py \
      --workdir=runs/rule110_n4 --config.passes=4
  Sweep: --config.passes in {1,2,3,4} at t=32 (a separate model per N; same seed, same
  data order); depth curve at N=1: --config.task.t_values="(4,)" ... "(16,)".
  Paper scale: 4 states x 24 bits, T=100, L=24, batch 512, 100k steps (~5B tokens).
  Expected time: not measured on an accelerator yet (no GPU was available); cost grows
  ~linearly in N. Estimate from FLOPs: ~3.2M params x 6 x 5.1e9 tokens x N ~ 1e17 N FLOP;
  at an assumed 50-100 TFLOP/s sustained on an H100, ~0.3-0.6 h per unit of N.
  Expected result (paper): exact accuracy (all 4 labels; chance 1/16) ~10% at N=1, ~20% at
  N=2, >30% at N=3-4 (`eval/acc/d=32` in metrics.jsonl / summary.json).

  CPU scale (`:cpu`, swept by `python -m experiments.sweep
  --sweep=experiments/configs/sweeps.py:rule110 --workdir=runs/rule110`): 4 states of 8 bits
  (T=36, L=8), t drawn per example from {1,2,3,4} (depth = t), d=32 attn+GDN, 2000 steps,
  2.5-11 min per run on one core of the loaded 2-core CPU (N=1 fastest). Exact-match
  accuracy over the 4 answer bits; the best constant answer scores 0.148 / 0.077 / 0.075 /
  0.080 at t = 1..4 (label bias; chance 1/16; BUILD_NOTES.md, "Measured: reproduction and
  beyond the paper").

  Tiny (CPU smoke test, 25-40 s on a 2-core CPU; loss 0.90 -> 0.05, eval acc 0.98 vs
  chance 0.25 at t=1):
  python -m experiments.train --config=experiments/configs/rule110.py:tiny --workdir=/tmp/r110

  Training many passes (README "Training many passes"): --config.init_from=<workdir of a
  trained run, e.g. its N=1 model> starts from its parameters (fresh optimizer);
  --config.passes_ramp_steps=K ramps N linearly from 1 to passes over the first K steps;
  --config.pass_stats_size=64 logs per-pass norms and recall at every eval.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
    c = common.base_config("rule110", num_states=4, width=24, t_values=(32,), boundary="periodic")
    c.batch_size = 512
    c.steps = 100_000
    if arg == "cpu":  # 4 states of 8 bits, t mixed per example: accuracy per t from one run
        common.make_cpu(c, num_states=4, width=8, t_values=(1, 2, 3, 4))
    elif arg == "depth":  # the depth ladder: 16-bit states, one t per model, 4 blocks
        common.make_cpu(c, num_states=4, width=16, t_values=(4,))
        c.layout = ("attn", "ssm", "attn", "ssm")  # the paper's layout at CPU width
        c.eval_passes = ()
    elif common.check_arg(arg, extra=("depth",)):
        common.make_tiny(c, num_states=2, width=8, t_values=(1,))
    return c
