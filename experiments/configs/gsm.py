"""GSM-Infinite analogue: generated modular arithmetic, question first (docs/method.md, task 3).

Run-book:
  python -m experiments.train --config=experiments/configs/gsm.py \
      --workdir=runs/gsm_n4 --config.passes=4
  Sweep: --config.passes in {1,2,4}; ops 1..8 per example (depth = ops), T=192, L=48,
  batch 256. From scratch (the paper fine-tuned pretrained models we cannot download).
  Expected time: not measured on an accelerator yet; training cost grows ~linearly in N.
  Expected result (paper, in shape): easy problems (few ops) saturate whatever N; the gain
  from N grows with the number of ops (`eval/acc/d=ops`; chance 1/11).

  Tiny (CPU smoke test, 20-30 s on a 2-core CPU; loss 3.50 -> 1.70, i.e. it learns that
  the answer is one of 5 values (ln 5 = 1.61) but not yet which: eval acc 0.25, chance 0.2):
  python -m experiments.train --config=experiments/configs/gsm.py:tiny --workdir=/tmp/gsm

  Training many passes (README "Training many passes"): --config.init_from=<workdir of a
  trained run, e.g. its N=1 model> starts from its parameters (fresh optimizer);
  --config.passes_ramp_steps=K ramps N linearly from 1 to passes over the first K steps;
  --config.pass_stats_size=64 logs per-pass norms and recall at every eval.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
    c = common.base_config("gsm")  # task knobs: the generator's defaults
    c.batch_size = 256
    c.steps = 50_000
    if arg == "cpu":  # mod 7, 1-4 operations, T=64 in windows of 16 (question evicted first)
        common.make_cpu(c, modulus=7, num_vars=24, ops_values=(1, 2, 3, 4), seq_len=64, window=16)
    elif common.check_arg(arg):
        common.make_tiny(c, modulus=5, num_vars=8, ops_values=(1, 2), seq_len=32, window=16)
    return c
