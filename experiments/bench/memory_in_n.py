"""Memory in N: XLA's temporary bytes of the paper-size Rule 110 train step
(`experiments/configs/rule110.py`, built as `experiments.train` builds it) per remat mode
and number of passes, from `memory_analysis()` of the compiled step. Nothing is run, so
the numbers do not depend on the machine's load (BUILD_NOTES.md "Memory in N").

    python -m experiments.bench.memory_in_n --batch=64 --passes=1,4,8 \\
        --remat=pass,window,window+pass
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from experiments.bench import gpu_train


def temp_mib(batch: int, passes: int, remat: str) -> float:
    """XLA's temporary MiB of the compiled train step at (batch, N, remat)."""
    c = gpu_train.rule110_config(False)
    c["batch_size"], c["passes"], c["remat"] = batch, passes, remat
    *_, mem = gpu_train.compile_step(c)
    if mem is None:
        raise RuntimeError("this backend reports no memory_analysis()")
    return mem["temp"] / 2**20


def table(batch: int, passes: Sequence[int], remats: Sequence[str]) -> str:
    """Markdown: per remat mode and N, the temp MiB and its ratio to the first N's."""
    lines = [f"| remat | N | temp MiB (batch {batch}) | vs N={passes[0]} |", "|---|---|---|---|"]
    for remat in remats:
        first = None
        for n in passes:
            mib = temp_mib(batch, n, remat)
            if first is None:
                first = mib
            lines.append(f"| {remat} | {n} | {mib:.1f} | {mib / first:.2f}x |")
    return "\n".join(lines)


def define_flags():
    """The command line's flags (defined here, not at import, so tests can import this)."""
    flags.DEFINE_integer("batch", 64, "Batch size (the config's is 512).")
    flags.DEFINE_list("passes", ["1", "4", "8"], "Values of N.")
    flags.DEFINE_list("remat", ["pass", "window", "window+pass"], "Remat modes.")


def main(argv):
    del argv
    f = flags.FLAGS
    print(table(f.batch, [int(n) for n in f.passes], f.remat))


if __name__ == "__main__":
    define_flags()
    app.run(main)
