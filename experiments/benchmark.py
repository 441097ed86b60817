"""Performance benchmark: wake, sleep and training costs side by side, against the targets of
docs/performance.md.

    python -m experiments.benchmark                 # full (~10-15 min on a 2-core CPU)
    python -m experiments.benchmark --quick         # < 2 min
    python -m experiments.benchmark --out=/tmp/r.json --md=/tmp/r.md

Writes a JSON record (`--out`, default benchmarks/results.json) and a markdown table (`--md`,
default: the JSON path with a .md suffix). Sections (one module each in experiments/bench/):

  ceiling  f32 matmul GFLOP/s (n = 1024..2048): the roof every fraction is reported against.
  wake     tokens/s: a Python loop of jitted `wake_step` (docs/design.md's loop) vs `stream` (one
           compiled scan) vs batched streams; stream time vs N when no window fills.
  latency  per-token wake latency at stream position ~L vs ~16L, hybrid vs a full-attention
           model that keeps its whole cache (attention-only, cache = everything read so far).
  sleep    one pass of the fast-weight rule over a window: per-token scan vs chunked form
           over chunk sizes, with GFLOP/s from formulas and the agreement of the two.
  train    value_and_grad of a masked cross-entropy of `forward` vs N: step time, forward
           time, peak temporary memory (XLA's memory_analysis), plain vs rematerialised.
  research the CLI's train step for the CPU-scale configs (recall:capacity, rule110:cpu,
           depo:cpu) vs the reference step: tokens/s, model FLOP/s, share of the matmul
           ceiling and a profile breakdown (bench/research.py). Run it on one core:
           taskset -c 0 python -m experiments.benchmark --sections=ceiling,research

How it times: experiments/bench/measure.py. The sizes of each mode: `suite.PRESETS`.
"""

from __future__ import annotations

import sys

from absl import app, flags

from experiments.bench import suite

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "benchmarks/results.json", "Where to write the JSON results.")
flags.DEFINE_string("md", None, "Where to write the markdown table (default: --out with .md).")
flags.DEFINE_enum("mode", "full", list(suite.PRESETS), "Problem sizes and repetitions.")
flags.DEFINE_bool("quick", False, "Shorthand for --mode=quick (< 2 minutes on a 2-core CPU).")
flags.DEFINE_list("sections", ",".join(suite.SECTIONS), "Sections to run.")
flags.DEFINE_integer("reps", None, "Timed repetitions per variant (default: from the mode).")


def main(argv):
    del argv
    mode = "quick" if FLAGS.quick else FLAGS.mode
    command = " ".join(["python -m experiments.benchmark", *sys.argv[1:]])
    res = suite.run(mode, tuple(FLAGS.sections), FLAGS.reps, command=command)
    out, md = suite.write(res, FLAGS.out, FLAGS.md)
    print(suite.to_markdown(res))
    print(f"[benchmark] wrote {out} and {md}")


if __name__ == "__main__":
    app.run(main)
