"""The GPU check (`python -m experiments.gpu_check`): its options, the part runner (the
report rewritten after each part, parts past the budget skipped) and its report."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from typing import Any

from experiments.bench import fla_compare, gpu_sleep, gpu_stream, gpu_train, measure

SECTIONS = ("stream", "sleep", "fla", "train")


@dataclasses.dataclass(frozen=True)
class Options:
    """The check's settings (the entry point's flags, which hold the defaults)."""

    tiny: bool  # every part at tiny shapes (CPU, seconds)
    out: str  # directory of gpu_check.json / .md
    reps: int  # timed repetitions
    batches: tuple[int, ...]  # sleep/fla: batch sizes
    seq_len: int  # sleep/fla: tokens per sequence
    heads: int
    head_dim: int
    chunk_sizes: tuple[int, ...]  # sleep: chunk sizes of ours
    precisions: tuple[str, ...]  # sleep: matmul precisions of our chunked form
    train_passes: tuple[int, ...]  # train: N with remat=pass


def shapes(opts: Options) -> dict[str, Any]:
    """The sleep part's shapes, chunk sizes, precisions and reps."""
    if opts.tiny:
        return dict(batches=(1,), T=24, H=2, d=8, chunks=(8,), reps=3, precisions=("highest",))
    return dict(
        batches=opts.batches, T=opts.seq_len, H=opts.heads, d=opts.head_dim,
        chunks=opts.chunk_sizes, reps=opts.reps, precisions=opts.precisions,
    )  # fmt: skip


def meta(tiny: bool, command: str) -> dict:
    """measure.meta plus the versions of torch, Triton, fla, Flax and Optax (None if absent)."""
    out = measure.meta("tiny" if tiny else "gpu", command)
    for mod in ("torch", "triton", "fla", "flax", "optax"):
        try:
            out[mod] = __import__(mod).__version__ if importlib.util.find_spec(mod) else None
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def run(opts: Options, sections, budget_s: float, isolate: bool, command: str, log=print):
    """Runs `sections` in SECTIONS order, none started after `budget_s`; the report is
    (re)written to `opts.out` after each part. Returns the results dict."""
    t0 = time.perf_counter()
    deadline = t0 + budget_s
    res: dict[str, Any] = {"meta": meta(opts.tiny, command), "sections": list(sections),
                           "skipped": []}  # fmt: skip

    def partial(name):  # a part's results so far, written, so a cut-short run keeps them
        def put(sec):
            res[name] = {**sec, "seconds": None}
            res["seconds"] = time.perf_counter() - t0
            write(res, opts.out)

        return put

    def done(name, t_sec):
        res[name]["seconds"] = time.perf_counter() - t_sec
        res["seconds"] = time.perf_counter() - t0
        write(res, opts.out)
        log(f"[gpu_check] {name}: {res[name]['seconds']:.1f}s")

    if "stream" in sections:
        ts = time.perf_counter()
        res["stream"] = gpu_stream.check(opts.tiny)
        done("stream", ts)
    if "sleep" in sections or "fla" in sections:
        ts = time.perf_counter()
        if time.perf_counter() > deadline:
            res["skipped"].append("sleep")
        else:
            with_fla = "fla" in sections
            sleep, fla = gpu_sleep.run(shapes(opts), with_fla, deadline, log, partial("sleep"))
            res.pop("sleep", None)
            if "sleep" in sections:
                res["sleep"] = sleep
                done("sleep", ts)
            if "fla" in sections:
                res["fla"] = fla
                done("fla", ts)
    if "train" in sections:
        ts = time.perf_counter()
        res["train"] = gpu_train.run(opts, deadline, isolate, log, partial("train"))
        done("train", ts)
    res["seconds"] = time.perf_counter() - t0
    write(res, opts.out)
    return res


def to_markdown(res: dict) -> str:
    """The report: a header line, then each part's section."""
    m = res["meta"]
    lines = [
        "# GPU check", "",
        f"{m['date_utc']}; device {m['device_kind']} x{m['device_count']} ({m['backend']}); "
        f"JAX {m['jax']}; torch {m.get('torch')}; triton {m.get('triton')}; fla "
        f"{m.get('fla')}; {m['cpu_count']} CPUs; mode {m['mode']}; "
        f"{res.get('seconds', 0):.0f} s. Command: `{m['command']}`", "",
    ]  # fmt: skip
    parts = {
        "stream": gpu_stream.markdown,
        "sleep": gpu_sleep.markdown,
        "fla": fla_compare.markdown,
        "train": gpu_train.markdown,
    }
    for name, part in parts.items():
        if name in res:
            lines += part(res[name])
    return "\n".join(lines)


def write(res: dict, out: str) -> tuple[str, str]:
    """Writes `out`/gpu_check.json and `out`/gpu_check.md; returns their paths."""
    os.makedirs(out, exist_ok=True)
    js, md = os.path.join(out, "gpu_check.json"), os.path.join(out, "gpu_check.md")
    with open(js, "w") as f:
        json.dump(measure.jsonable(res), f, indent=1, default=str)
    with open(md, "w") as f:
        f.write(to_markdown(res))
    return js, md
