"""The benchmarks behind `python -m experiments.benchmark` and `python -m experiments.gpu_check`.

  measure.py      compile, interleaved timing, XLA temp memory, errors, machine metadata,
                  JSON-safe values, markdown tables
  flops.py        FLOP formulas (rule scan and chunk form, a whole train step)
  inputs.py       random tokens, model parameters, the rule's q/k/v/gates
  suite.py        the CPU benchmark: presets, the section runner, its report
  ceiling.py, wake.py, latency.py, sleep.py, training.py, research.py: one section each
                  (run + markdown)
  targets.py      docs/performance.md's targets: verdicts and their table
  gpu_suite.py    the GPU check: options, the part runner, its report
  gpu_stream.py, gpu_sleep.py, fla_compare.py, gpu_train.py: one part each (run + markdown)
  memory_in_n.py  XLA's temp bytes of the paper-size step per remat mode and N (its own
                  command: `python -m experiments.bench.memory_in_n`)

Nothing else here reads flags: the two entry points turn theirs into arguments, and
memory_in_n defines its own only when it runs as a program.
"""
