"""The GPU check: one prepared run of < 9 minutes on one H200 that writes
a JSON + markdown report (`--out`, default benchmarks/gpu/) with

  stream   `sc.stream` == `sc.forward` (logits and fast weights) on a small hybrid model, at
           `jax.default_matmul_precision("highest")` (and at the default, for contrast), for
           impl="scan" and impl="chunked": max abs / rel error.
  sleep    one sleep pass of the gated delta rule, per-token `rules.scan_rule` vs
           `chunked.CHUNKED["gated_delta"]` at paper shapes (B in {1, 8}, T=8192, H=16,
           head 128; float32 and bfloat16 inputs; chunk sizes x matmul precisions): median
           time (compiled separately, warmed up, >= 10 interleaved reps), tokens/s, ns per
           token and head, and the rel. error against the f32 scan at "highest" precision on
           the same (dtype-rounded) inputs.
  fla      fla's Triton `chunk_gated_delta_rule` on the same inputs and chip, interleaved
           with ours, if `fla` (fla-core), torch and a CUDA device are there; otherwise the
           report says "fla not available" (conventions: experiments/bench/fla_compare.py).
  train    the paper-size Rule 110 config (`experiments/configs/rule110.py`, default
           variant) built as `python -m experiments.train` builds it (`resolve_config` +
           `train_step_from_config`): the default row (N=1, remat="none") and N in {1, 4, 8}
           with remat="pass", each with compute_dtype float32 and bfloat16: step time,
           tokens/s, model FLOP/s (`experiments/bench/flops.py`), MFU against 989 TFLOP/s
           (H100/H200 dense bf16) and against 494.7 TFLOP/s (dense TF32, what f32 runs on),
           XLA's temp bytes (`memory_analysis()`) and the device's peak bytes in use (each
           row in its own process on an accelerator, so the peaks do not mix).

    python -m experiments.gpu_check                    # on the GPU machine (~5-9 min)
    python -m experiments.gpu_check --tiny             # every part at tiny shapes, CPU, s
    bash experiments/gpu_check.sh                      # offline install + timeout + this

Each part is a module of experiments/bench/ (gpu_stream, gpu_sleep, fla_compare, gpu_train;
the runner and the report: gpu_suite). Budget: sections run in the order above; the report
is rewritten after each one, and a section (or train row) that would start after
`--budget_s` is skipped and marked so, so a run cut short still leaves what it measured.

Offline install (the GPU machine has JAX (CUDA), torch and Triton but no network). On a
machine with network, from the repo root:

    bash experiments/gpu_wheels.sh       # -> .gpu_wheels/ (git-ignored, ~10 MiB)

downloads, with `pip download --no-deps`: flash-linear-attention, fla-core, einops,
ml-collections, flax, optax, absl-py, chex, treescope, etils, rich, pygments,
markdown-it-py, mdurl, typing_extensions (pure Python) and msgpack, PyYAML (binary; for
CPython 3.10-3.13, manylinux x86_64). Not carried: orbax-checkpoint and its tensorstore
(large): this check imports neither checkpointing nor the training loop (only the library
modules it uses), so it needs a library whose `import sleep_consolidation` does not import
Orbax. `gpu_check.sh` pip-installs (`--no-index --find-links .gpu_wheels --no-deps
--target`) only the packages that do not import, then runs this module under `timeout`.
flash-linear-attention (fla's layers and models) needs transformers and is downloaded but
not installed: the kernels are in fla-core. fla-core 0.6 wants torch >= 2.7 and
Triton >= 3.3.

The device `run` tool's command (carry: [".gpu_wheels"], timeout_s=600; the report comes
back under $OUT/gpu):

    GPU_CHECK_TIMEOUT=560 bash experiments/gpu_check.sh "$OUT/gpu"

CPU mode (`--tiny`, run by tests/test_gpu_check.py): ~32 s of CPU time, every part at tiny
shapes (sleep T=24 H=2 d=8; train on rule110:tiny shrunk to one ssm block, AdamW, batch 8).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave room for torch

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments.bench import gpu_suite, gpu_train  # noqa: E402

SECTIONS = gpu_suite.SECTIONS

_OUT = flags.DEFINE_string("out", "benchmarks/gpu", "Directory of gpu_check.json / .md.")
_TINY = flags.DEFINE_bool("tiny", False, "Every part at tiny shapes (CPU, seconds).")
_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS), f"Subset of {SECTIONS}.")
_BUDGET = flags.DEFINE_float(
    "budget_s", 480.0, "Start no new section or train row after this many seconds."
)
_REPS = flags.DEFINE_integer("reps", 10, "Timed repetitions (median reported).")
_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Sleep/fla: batch sizes.")
_T = flags.DEFINE_integer("seq_len", 8192, "Sleep/fla: tokens per sequence.")
_HEADS = flags.DEFINE_integer("heads", 16, "Sleep/fla: heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Sleep/fla: head dim (d_k = d_v).")
_CHUNKS = flags.DEFINE_list("chunk_sizes", ["32", "64"], "Sleep: chunk sizes of ours.")
_PRECISIONS = flags.DEFINE_list(
    "precisions", ["default", "highest"], "Sleep: matmul precisions of our chunked form."
)
_TRAIN_N = flags.DEFINE_list("train_passes", ["1", "4", "8"], "Train: N with remat=pass.")
_ISOLATE = flags.DEFINE_enum(
    "isolate", "auto", ["auto", "yes", "no"], "Train rows in child processes (auto: not on CPU)."
)
_CHILD = flags.DEFINE_string(
    "child_row", None, "Internal: run one train row ('N:remat:compute_dtype')."
)
_CHILD_JSON = flags.DEFINE_string("child_json", None, "Internal: where the child writes.")


def _options() -> gpu_suite.Options:
    ints = lambda values: tuple(int(v) for v in values)
    return gpu_suite.Options(
        tiny=_TINY.value, out=_OUT.value, reps=_REPS.value, batches=ints(_BATCHES.value),
        seq_len=_T.value, heads=_HEADS.value, head_dim=_HEAD_DIM.value,
        chunk_sizes=ints(_CHUNKS.value), precisions=tuple(_PRECISIONS.value),
        train_passes=ints(_TRAIN_N.value),
    )  # fmt: skip


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    opts = _options()
    if _CHILD.value:
        gpu_train.child_row(opts, _CHILD.value, _CHILD_JSON.value)
        return
    unknown = set(_SECTIONS.value) - set(SECTIONS)
    if unknown:
        raise app.UsageError(f"unknown sections {sorted(unknown)}; known: {SECTIONS}")
    isolate = {"yes": True, "no": False}.get(_ISOLATE.value, jax.default_backend() != "cpu")
    print("JAX", jax.__version__, "devices:", jax.devices(), flush=True)
    command = " ".join(sys.argv)
    res = gpu_suite.run(opts, _SECTIONS.value, _BUDGET.value, isolate, command)
    js, md = gpu_suite.write(res, opts.out)
    print(gpu_suite.to_markdown(res))
    print(f"[gpu_check] wrote {js} and {md} in {res['seconds']:.0f}s")


if __name__ == "__main__":
    app.run(main)
