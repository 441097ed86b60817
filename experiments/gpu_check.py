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
           report says "fla not available". Conventions (read from fla's own naive
           reference): q, k, v [B, T, H, d], state [B, H, d_k, d_v], gate g = log(alpha)
           (log space), beta post-sigmoid, the output read after the write; our readout has
           no 1/sqrt(d) so scale=1.0; q and k are l2-normalised by us (not in the kernel).
  train    the paper-size Rule 110 config (`experiments/configs/rule110.py`, default
           variant) built as `python -m experiments.train` builds it (`resolve_config` +
           `train_step_from_config`): the default row (N=1, remat="none") and N in {1, 4, 8}
           with remat="pass", each with compute_dtype float32 and bfloat16: step time,
           tokens/s, model FLOP/s (`bench_research.
           model_flops_per_step`), MFU against 989 TFLOP/s (H100/H200 dense bf16) and
           against the f32 peak (67 TFLOP/s, no tensor cores), XLA's
           temp bytes (`memory_analysis()`) and the device's peak bytes in use (each row in
           its own process on an accelerator, so the peaks do not mix).

    python -m experiments.gpu_check                    # on the GPU machine (~5-9 min)
    python -m experiments.gpu_check --tiny             # every part at tiny shapes, CPU, s
    bash experiments/gpu_check.sh                      # offline install + timeout + this

Budget: sections run in the order above; the report is rewritten after each one, and a
section (or train row) that would start after `--budget_s` is skipped and marked so, so a
run cut short still leaves what it measured.

Offline install (the GPU machine has JAX (CUDA), torch and Triton but no network). On a
machine with network, from the repo root:

    bash experiments/gpu_wheels.sh       # -> .gpu_wheels/ (git-ignored, ~10 MiB)

downloads, with `pip download --no-deps`: flash-linear-attention, fla-core, einops,
ml-collections, flax, optax, absl-py, chex, treescope, etils, rich, pygments,
markdown-it-py, mdurl, typing_extensions (pure Python) and msgpack, PyYAML (binary; for
CPython 3.10-3.13, manylinux x86_64). Not carried: orbax-checkpoint and its tensorstore
(large): this check never imports checkpointing, and if orbax is missing a stub module
stands in for it (`sleep_consolidation/__init__` imports the checkpointing module, whose
Orbax calls are only made inside functions this check never calls). `gpu_check.sh` pip-
installs (`--no-index --find-links .gpu_wheels --no-deps --target`) only the packages that
do not import, then runs this module under `timeout`. flash-linear-attention (fla's layers
and models) needs transformers and is downloaded but not installed: the kernels are in
fla-core. fla-core 0.6 wants torch >= 2.7 and Triton >= 3.3.

The device `run` tool's command (carry: [".gpu_wheels"], timeout_s=600; the report comes
back under $OUT/gpu):

    GPU_CHECK_TIMEOUT=560 bash experiments/gpu_check.sh "$OUT/gpu"

CPU mode (`--tiny`, run by tests/test_gpu_check.py): ~32 s of CPU time, every part at tiny
shapes (sleep T=24 H=2 d=8; train on rule110:tiny shrunk to one ssm block, AdamW, batch 8).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave room for torch


def _stub_orbax() -> bool:
    """Puts a stand-in `orbax.checkpoint` into sys.modules if the real one does not import
    (checkpointing.py only touches it inside functions this check never calls)."""
    try:
        if importlib.util.find_spec("orbax.checkpoint") is not None:
            return False
    except (ImportError, ValueError):
        pass

    class _Missing(types.ModuleType):
        def __getattr__(self, name):
            raise ImportError(f"orbax.checkpoint is not installed (asked for {name!r})")

    orbax = types.ModuleType("orbax")
    ocp = _Missing("orbax.checkpoint")
    orbax.checkpoint = ocp
    sys.modules["orbax"], sys.modules["orbax.checkpoint"] = orbax, ocp
    return True


ORBAX_STUBBED = _stub_orbax()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import sleep_consolidation as sc  # noqa: E402
from experiments import bench_research, benchmark  # noqa: E402
from experiments.configs import rule110  # noqa: E402
from sleep_consolidation import chunked, optimizers, rules, run_config, train_step  # noqa: E402

SECTIONS = ("stream", "sleep", "fla", "train")
PEAK_BF16_TFLOPS = 989.0  # H100 / H200 SXM dense bf16
PEAK_F32_TFLOPS = 67.0  # H100 / H200 SXM f32 without tensor cores (TF32: 494.7)

# experiments.benchmark (imported for its timing helpers) defines flags of its own at import;
# this module's flags replace them.
for _name in ("out", "md", "mode", "quick", "sections", "reps"):
    if _name in flags.FLAGS:
        delattr(flags.FLAGS, _name)

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


def _shapes(tiny: bool) -> dict[str, Any]:
    if tiny:
        return dict(batches=(1,), T=24, H=2, d=8, chunks=(8,), reps=3, precisions=("highest",))
    return dict(
        batches=tuple(int(b) for b in _BATCHES.value), T=_T.value, H=_HEADS.value,
        d=_HEAD_DIM.value, chunks=tuple(int(c) for c in _CHUNKS.value), reps=_REPS.value,
        precisions=tuple(_PRECISIONS.value),
    )  # fmt: skip


def _errs(a, b) -> dict[str, float]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.max(np.abs(a - b))
    return {"max_abs": float(diff), "max_rel": float(diff / max(np.max(np.abs(b)), 1e-30))}


def _merge_errs(pairs) -> dict[str, float]:
    es = [_errs(a, b) for a, b in pairs]
    return {k: max(e[k] for e in es) for k in ("max_abs", "max_rel")}


# --- 1. stream == forward -----------------------------------------------------------------


def check_stream(tiny: bool) -> dict:
    """stream vs forward, logits and fast weights, per impl and matmul precision."""
    if tiny:  # CPU seconds: one impl, one precision, two blocks
        kw = dict(vocab_size=11, d_model=16, num_heads=2, chunk_size=4)
        B, T, window, passes, layout = 2, 7, 3, 2, ("attn", "ssm")
        impls, precisions = ("chunked",), ("highest",)
    else:
        kw = dict(vocab_size=64, d_model=256, num_heads=4, chunk_size=16)
        B, T, window, passes, layout = 4, 200, 24, 3, ("attn", "ssm", "attn", "ssm")
        impls, precisions = ("scan", "chunked"), ("highest", "default")
    fwd = jax.jit(sc.forward, static_argnames=("window", "passes", "return_fast"))
    rows = []
    for impl in impls:
        cfg = sc.ModelConfig(layout=layout, impl=impl, **kw)
        params = sc.init_params(cfg, jax.random.key(0))
        tokens = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)
        for precision in precisions:
            with jax.default_matmul_precision(precision):
                state, streamed = sc.stream(
                    params, sc.init_state(cfg, batch_size=B, window=window), tokens, passes
                )
                logits, fast = fwd(params, tokens, window=window, passes=passes, return_fast=True)
            # The fast weights agree only if the last window did not sleep (T % window != 0).
            row = {
                "impl": impl,
                "precision": precision,
                "logits": _errs(streamed, logits),
                "fast": _merge_errs(
                    zip(jax.tree.leaves(state.fast), jax.tree.leaves(fast), strict=True)
                ),
            }
            rows.append(row)
    return {
        "model": {**kw, "layout": layout, "B": B, "T": T, "window": window, "passes": passes},
        "rows": rows,
    }


# --- 2. + 3. sleep pass: scan vs chunked vs fla -----------------------------------------------


def _sleep_inputs(B, T, H, d, seed=0):
    """float32 numpy inputs as in benchmark.bench_sleep (unit q, k; alpha in [0.5, 1])."""
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    f = lambda x: np.asarray(x, np.float32)
    return dict(
        S0=f(rng.standard_normal((B, H, d, d)) / d),
        q=f(unit(rng.standard_normal((B, T, H, d)))),
        k=f(unit(rng.standard_normal((B, T, H, d)))),
        v=f(rng.standard_normal((B, T, H, d))),
        alpha=f(rng.uniform(0.5, 1.0, (B, T, H))),
        beta=f(rng.uniform(0.0, 1.0, (B, T, H))),
    )


_ORDER = ("S0", "q", "k", "v", "alpha", "beta")
REFERENCE = "f32 scan_rule, precision=highest"


def _device_args(x: dict, dtype):
    """Device arrays: S0 in f32, the rest in `dtype`."""
    return tuple(
        jnp.asarray(x[n], jnp.float32 if n == "S0" else dtype) for n in _ORDER
    )  # fmt: skip


def _fla():
    """(torch, chunk_gated_delta_rule) or a string saying why not."""
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return f"fla not available: torch does not import ({e})"
    if not torch.cuda.is_available():
        return "fla not available: no CUDA device for torch"
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as e:  # noqa: BLE001
        return f"fla not available: {type(e).__name__}: {e}"
    return torch, chunk_gated_delta_rule


def _to_torch(torch, x):
    """A jax array -> a CUDA torch tensor with the same bits (bfloat16 via an int16 view)."""
    a = np.asarray(x)
    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).cuda().view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a)).cuda()


def bench_sleep(
    tiny: bool, with_fla: bool, deadline: float, log=print, progress=None
) -> tuple[dict, dict]:
    """One sleep pass: our scan and chunked variants (and fla's kernel), per (B, dtype)."""
    s = _shapes(tiny)
    T, H, d, reps = s["T"], s["H"], s["d"], s["reps"]
    rule = rules.get_rule("gated_delta")
    ours = chunked.CHUNKED["gated_delta"]
    fla = _fla() if with_fla else "fla section not requested"
    fla_ok = not isinstance(fla, str)
    rows, fla_rows, skipped = [], [], []
    ref_C = 64 if 64 in s["chunks"] else s["chunks"][-1]
    ours_name = f"chunked_C{ref_C}_{s['precisions'][0]}"  # the variant fla is compared with
    for B in s["batches"]:
        x = _sleep_inputs(B, T, H, d, seed=B)
        for dname, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
            if time.perf_counter() > deadline:
                skipped.append(f"B={B} {dname}")
                continue
            args = _device_args(x, dtype)
            # Reference: the f32 per-token scan at "highest" on the dtype-rounded inputs.
            ref_args = tuple(a.astype(jnp.float32) for a in args)
            with jax.default_matmul_precision("highest"):
                ref_prog, _ = benchmark.compile_fn(
                    lambda *a: rules.scan_rule(rule, None, *a), *ref_args
                )
            ref = jax.block_until_ready(ref_prog(*ref_args))
            progs, compile_s, errs, flops = {}, {}, {}, {}
            progs["scan"], compile_s["scan"] = benchmark.compile_fn(
                lambda *a: rules.scan_rule(rule, None, *a), *args
            )
            flops["scan"] = benchmark._scan_flops(T, d, H, B)
            for C in s["chunks"]:
                for prec in s["precisions"]:
                    name = f"chunked_C{C}_{prec}"
                    with jax.default_matmul_precision(prec):
                        progs[name], compile_s[name] = benchmark.compile_fn(
                            lambda *a, C=C: ours(*a, None, None, C), *args
                        )
                    flops[name] = benchmark._chunk_flops(T, d, H, B, C)
            outs = {}
            for name, prog in progs.items():
                outs[name] = prog(*args)
                errs[name] = {
                    "o": _errs(outs[name][0], ref[0])["max_rel"],
                    "S": _errs(outs[name][1], ref[1])["max_rel"],
                }
            fns = {n: (lambda p=p, a=args: p(*a)) for n, p in progs.items()}
            fla_info = None
            if fla_ok:
                torch, kernel = fla
                tq, tk, tv, tb = (_to_torch(torch, a) for a in args[1:4] + args[5:6])
                tg = torch.log(_to_torch(torch, args[4]).float())  # log-space gate, f32
                th0 = _to_torch(torch, args[0])

                def run_fla(kernel=kernel, a=(tq, tk, tv, tg, tb), h0=th0):
                    return kernel(*a, scale=1.0, initial_state=h0, output_final_state=True)

                try:
                    o_fla, S_fla = run_fla()
                    torch.cuda.synchronize()
                    o_np, S_np = (t.float().cpu().numpy() for t in (o_fla, S_fla))
                    mine = outs[ours_name]
                    fla_info = {
                        "rel_err_o_vs_f32_scan": _errs(o_np, ref[0])["max_rel"],
                        "rel_err_S_vs_f32_scan": _errs(S_np, ref[1])["max_rel"],
                        "rel_err_o_vs_ours": _errs(o_np, mine[0])["max_rel"],
                        "rel_err_S_vs_ours": _errs(S_np, mine[1])["max_rel"],
                    }
                    fns["fla"] = lambda f=run_fla, sync=torch.cuda.synchronize: (f(), sync())[1]
                except Exception as e:  # noqa: BLE001
                    fla_info = {"error": f"{type(e).__name__}: {e}"}
            t = benchmark.time_interleaved(fns, reps)
            scan_t = t["scan"]["median_s"]
            for name in progs:
                med = t[name]["median_s"]
                rows.append({
                    "B": B, "T": T, "H": H, "d": d, "dtype": dname, "variant": name,
                    **t[name], "compile_s": compile_s[name], "tokens_per_s": B * T / med,
                    "ns_per_token_head": 1e9 * med / (B * T * H),
                    "speedup_vs_scan": scan_t / med, "tflops": flops[name] / med / 1e12,
                    "rel_err_o": errs[name]["o"], "rel_err_S": errs[name]["S"],
                })  # fmt: skip
            if fla_info is not None:
                row = {"B": B, "T": T, "H": H, "d": d, "dtype": dname, **fla_info}
                if "fla" in t:
                    mine = t[ours_name]["median_s"]
                    row.update(t["fla"])
                    row["tokens_per_s"] = B * T / t["fla"]["median_s"]
                    row["ours_variant"] = ours_name
                    row["ours_over_fla"] = mine / t["fla"]["median_s"]
                fla_rows.append(row)
            best = min((r for r in rows if r["B"] == B and r["dtype"] == dname),
                       key=lambda r: r["median_s"])  # fmt: skip
            if progress is not None:
                progress({"rows": rows, "skipped": skipped, "reference": REFERENCE})
            log(f"[sleep] B={B} {dname}: scan {1e3 * scan_t:.2f} ms, best {best['variant']} "
                f"{1e3 * best['median_s']:.2f} ms ({best['speedup_vs_scan']:.1f}x)")  # fmt: skip
    sleep = {"rows": rows, "skipped": skipped, "reference": REFERENCE}
    if fla_ok:
        import fla as fla_pkg

        fla_sec = {"available": True, "version": getattr(fla_pkg, "__version__", None),
                   "torch": fla[0].__version__, "rows": fla_rows,
                   "ours_variant": ours_name}  # fmt: skip
    else:
        fla_sec = {"available": False, "reason": fla, "rows": []}
    return sleep, fla_sec


# --- 4. + 5. train step of the paper-size Rule 110 config ---------------------------------------


def _rule110_config(tiny: bool) -> dict:
    c = run_config.config_to_dict(rule110.get_config("tiny" if tiny else None))
    if tiny:  # rule110:tiny, smaller still: its compile time is most of the CPU mode's
        c.update(batch_size=8, layout=("ssm",), optimizer="adamw")
    return c


def train_row(tiny: bool, passes: int, remat: str, reps: int, dtype: str = "float32") -> dict:
    """One train step of the Rule 110 config (as experiments.train builds it) at (N, remat)
    with `compute_dtype=dtype`."""
    c = _rule110_config(tiny)
    c["passes"], c["remat"] = passes, remat
    c["compute_dtype"] = None if dtype == "float32" else dtype
    spec = run_config.resolve_config(c)
    tx = optimizers.optimizer_from_config(c)
    step = train_step.train_step_from_config(c, spec, tx)
    dev = jax.local_devices()[0]
    params = sc.init_params(spec.model_config, jax.random.key(c["seed"]))
    state = jax.device_put(train_step.init_train_state(params, tx), dev)
    batch = jax.device_put(spec.task.batch(c["seed"], 0, c["batch_size"]), dev)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = None
    try:
        m = compiled.memory_analysis()
        mem = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("temp", "argument", "output")}
    except Exception:  # noqa: BLE001
        pass
    state, metrics = compiled(state, batch)  # warm-up; the state is donated on accelerators
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    peak = None if not stats else stats.get("peak_bytes_in_use")
    tokens = c["batch_size"] * spec.task.seq_len
    flops = bench_research.model_flops_per_step(c, spec)
    cfg = spec.model_config
    return {
        "N": passes, "remat": remat, "compute_dtype": dtype, "batch_size": c["batch_size"],
        "seq_len": spec.task.seq_len, "window": spec.window, "microbatches": c["microbatches"],
        "d_model": cfg.d_model, "layout": list(cfg.layout), "impl": cfg.impl,
        "chunk_size": cfg.chunk_size, "compile_s": compile_s, "median_s": med,
        "min_s": min(times), "max_s": max(times), "reps": reps, "tokens_per_s": tokens / med,
        "model_tflops_per_step": flops / 1e12, "model_tflops_per_s": flops / med / 1e12,
        "mfu_bf16": flops / med / (PEAK_BF16_TFLOPS * 1e12),
        "mfu_f32": flops / med / (PEAK_F32_TFLOPS * 1e12),
        "temp_bytes": None if mem is None else mem["temp"],
        "argument_bytes": None if mem is None else mem["argument"],
        "peak_bytes_in_use": peak, "loss": float(metrics["loss"]),
    }  # fmt: skip


def _train_rows_spec(tiny: bool) -> list[tuple[int, str, str]]:
    """(N, remat, compute_dtype) of each train row: the config as it is in float32 and in
    bfloat16, then N in --train_passes with remat=pass in both dtypes."""
    if tiny:  # compiling the step is most of the CPU mode's time: one N, both dtypes
        return [(1, "pass", "float32"), (1, "pass", "bfloat16")]
    c = _rule110_config(tiny)
    points = [(c["passes"], c["remat"])]  # the config as it is (the default row)
    points += [(int(n), "pass") for n in _TRAIN_N.value if (int(n), "pass") not in points]
    return [(n, remat, dtype) for n, remat in points for dtype in ("float32", "bfloat16")]


def bench_train(tiny: bool, deadline: float, isolate: bool, log=print, progress=None) -> dict:
    rows, skipped = [], []
    sec = {"config": "experiments/configs/rule110.py" + (":tiny" if tiny else ""),
           "peaks_tflops": {"bf16": PEAK_BF16_TFLOPS, "f32": PEAK_F32_TFLOPS},
           "isolated_processes": isolate, "rows": rows, "skipped": skipped}  # fmt: skip
    reps = 3 if tiny else _REPS.value
    for passes, remat, dtype in _train_rows_spec(tiny):
        left = deadline - time.perf_counter()
        what = f"N={passes} remat={remat} {dtype}"
        if left <= 0:
            skipped.append(f"{what}: out of budget")
            continue
        try:
            if isolate:
                row = _child(tiny, passes, remat, dtype, timeout=max(left, 30.0))
            else:
                row = train_row(tiny, passes, remat, reps, dtype)
        except Exception as e:  # noqa: BLE001 - one row failing (e.g. OOM) keeps the others
            skipped.append(f"{what}: {type(e).__name__}: {str(e)[:300]}")
            log(f"[train] {what} failed: {e}")
            continue
        rows.append(row)
        if progress is not None:
            progress(sec)
        log(f"[train] {what}: {row['tokens_per_s']:.0f} tokens/s, "
            f"MFU {100 * row['mfu_bf16']:.2f}% (bf16 peak), temp {_mib(row['temp_bytes'])} "
            f"MiB, peak {_mib(row['peak_bytes_in_use'])} MiB")  # fmt: skip
    return sec


def _child(tiny, passes, remat, dtype, timeout):
    path = os.path.join(_OUT.value, f".train_row_N{passes}_{remat}_{dtype}.json")
    cmd = [sys.executable, "-m", "experiments.gpu_check",
           f"--child_row={passes}:{remat}:{dtype}",
           f"--child_json={path}", f"--reps={_REPS.value}", f"--out={_OUT.value}"]  # fmt: skip
    if tiny:
        cmd.append("--tiny")
    proc = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child exited {proc.returncode}: {proc.stderr[-1500:]}")
    with open(path) as f:
        row = json.load(f)
    os.remove(path)
    return row


# --- report -------------------------------------------------------------------------------------


def _mib(b):
    return "-" if b is None else f"{b / 2**20:.0f}"


def _meta(tiny: bool) -> dict:
    meta = benchmark._meta("tiny" if tiny else "gpu", " ".join(sys.argv))
    meta["orbax_stubbed"] = ORBAX_STUBBED
    for mod in ("torch", "triton", "fla", "flax", "optax"):
        try:
            meta[mod] = __import__(mod).__version__ if importlib.util.find_spec(mod) else None
        except Exception:  # noqa: BLE001
            meta[mod] = None
    return meta


def to_markdown(res: dict) -> str:
    m = res["meta"]
    lines = [
        "# GPU check", "",
        f"{m['date_utc']}; device {m['device_kind']} x{m['device_count']} ({m['backend']}); "
        f"JAX {m['jax']}; torch {m.get('torch')}; triton {m.get('triton')}; fla "
        f"{m.get('fla')}; {m['cpu_count']} CPUs; mode {m['mode']}; "
        f"{res.get('seconds', 0):.0f} s. Command: `{m['command']}`", "",
    ]  # fmt: skip
    if "stream" in res:
        s = res["stream"]
        lines += ["## stream == forward", "", f"Model: {s['model']}", "",
                  "| impl | precision | logits max abs | logits max rel | fast max abs | "
                  "fast max rel |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in s["rows"]:
            lines.append(f"| {r['impl']} | {r['precision']} | {r['logits']['max_abs']:.2e} | "
                         f"{r['logits']['max_rel']:.2e} | {r['fast']['max_abs']:.2e} | "
                         f"{r['fast']['max_rel']:.2e} |")  # fmt: skip
        lines.append("")
    if "sleep" in res:
        s = res["sleep"]
        lines += ["## One sleep pass: per-token scan vs chunked (gated delta)", "",
                  f"Agreement: max rel. error of o and S_T against the {s['reference']} on "
                  "the same dtype-rounded inputs. Times: median (min-max) of interleaved reps.",
                  "", "| B | T | H | d | dtype | variant | ms (min-max) | tokens/s | "
                  "ns/token/head | vs scan | TFLOP/s | rel err o | rel err S | compile s |",
                  "|" + "---|" * 14]  # fmt: skip
        for r in s["rows"]:
            lines.append(
                f"| {r['B']} | {r['T']} | {r['H']} | {r['d']} | {r['dtype']} | {r['variant']} "
                f"| {1e3 * r['median_s']:.3g} ({1e3 * r['min_s']:.3g}-{1e3 * r['max_s']:.3g}) "
                f"| {r['tokens_per_s']:.3g} | {r['ns_per_token_head']:.3g} | "
                f"{r['speedup_vs_scan']:.1f}x | {r['tflops']:.3g} | {r['rel_err_o']:.1e} | "
                f"{r['rel_err_S']:.1e} | {r['compile_s']:.1f} |"
            )
        if s["skipped"]:
            lines.append(f"\nSkipped (budget): {', '.join(s['skipped'])}")
        lines.append("")
    if "fla" in res:
        f = res["fla"]
        lines += ["## fla's Triton chunk_gated_delta_rule on the same inputs", ""]
        if not f["available"]:
            lines += [f["reason"], ""]
        else:
            lines += [f"fla {f['version']}, torch {f['torch']}; ours = {f['ours_variant']}; "
                      "g = log(alpha) in f32, scale=1.0, initial state S0.", "",
                      "| B | dtype | fla ms (min-max) | tokens/s | ours / fla | rel err o vs "
                      "f32 scan | vs ours | rel err S vs f32 scan | vs ours |",
                      "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for r in f["rows"]:
                if "error" in r:
                    lines.append(f"| {r['B']} | {r['dtype']} | error: {r['error']} |")
                    continue
                lines.append(
                    f"| {r['B']} | {r['dtype']} | {1e3 * r['median_s']:.3g} "
                    f"({1e3 * r['min_s']:.3g}-{1e3 * r['max_s']:.3g}) | "
                    f"{r['tokens_per_s']:.3g} | {r['ours_over_fla']:.2f}x | "
                    f"{r['rel_err_o_vs_f32_scan']:.1e} | {r['rel_err_o_vs_ours']:.1e} | "
                    f"{r['rel_err_S_vs_f32_scan']:.1e} | {r['rel_err_S_vs_ours']:.1e} |"
                )
            lines.append("")
    if "train" in res:
        t = res["train"]
        lines += [f"## Train step: {t['config']} (built as experiments.train builds it)", "",
                  f"MFU = model FLOPs (bench_research.model_flops_per_step) / time / peak; "
                  f"peaks {t['peaks_tflops']['bf16']} TFLOP/s (dense bf16) and "
                  f"{t['peaks_tflops']['f32']} TFLOP/s (f32, no tensor cores). Peak bytes: "
                  "the device's peak_bytes_in_use"
                  + (" (one process per row)." if t["isolated_processes"] else "."), "",
                  "| N | remat | compute | batch x T | ms (min-max) | tokens/s | "
                  "model TFLOP/s | MFU bf16 | MFU f32 | temp MiB | peak MiB | compile s | "
                  "loss |",
                  "|" + "---|" * 13]  # fmt: skip
        for r in t["rows"]:
            lines.append(
                f"| {r['N']} | {r['remat']} | {r.get('compute_dtype', 'float32')} | "
                f"{r['batch_size']} x {r['seq_len']} | "
                f"{1e3 * r['median_s']:.3g} ({1e3 * r['min_s']:.3g}-{1e3 * r['max_s']:.3g}) | "
                f"{r['tokens_per_s']:.4g} | {r['model_tflops_per_s']:.3g} | "
                f"{100 * r['mfu_bf16']:.2f}% | {100 * r['mfu_f32']:.1f}% | "
                f"{_mib(r['temp_bytes'])} | {_mib(r['peak_bytes_in_use'])} | "
                f"{r['compile_s']:.1f} | {r['loss']:.3f} |"
            )
        if t["skipped"]:
            lines += ["", "Skipped: " + "; ".join(t["skipped"])]
        lines.append("")
    return "\n".join(lines)


def write(res: dict, out: str) -> tuple[str, str]:
    os.makedirs(out, exist_ok=True)
    js, md = os.path.join(out, "gpu_check.json"), os.path.join(out, "gpu_check.md")
    with open(js, "w") as f:
        json.dump(benchmark._jsonable(res), f, indent=1, default=str)
    with open(md, "w") as f:
        f.write(to_markdown(res))
    return js, md


def run(tiny: bool, sections, out: str, budget_s: float, isolate: bool, log=print) -> dict:
    t0 = time.perf_counter()
    deadline = t0 + budget_s
    res: dict[str, Any] = {"meta": _meta(tiny), "sections": list(sections), "skipped": []}

    def partial(name):  # a part's results so far, written, so a cut-short run keeps them
        def put(sec):
            res[name] = {**sec, "seconds": None}
            res["seconds"] = time.perf_counter() - t0
            write(res, out)

        return put

    def done(name, t_sec):
        res[name]["seconds"] = time.perf_counter() - t_sec
        res["seconds"] = time.perf_counter() - t0
        write(res, out)
        log(f"[gpu_check] {name}: {res[name]['seconds']:.1f}s")

    if "stream" in sections:
        ts = time.perf_counter()
        res["stream"] = check_stream(tiny)
        done("stream", ts)
    if "sleep" in sections or "fla" in sections:
        ts = time.perf_counter()
        if time.perf_counter() > deadline:
            res["skipped"].append("sleep")
        else:
            sleep, fla = bench_sleep(tiny, "fla" in sections, deadline, log, partial("sleep"))
            res.pop("sleep", None)
            if "sleep" in sections:
                res["sleep"] = sleep
                done("sleep", ts)
            if "fla" in sections:
                res["fla"] = fla
                done("fla", ts)
    if "train" in sections:
        ts = time.perf_counter()
        res["train"] = bench_train(tiny, deadline, isolate, log, partial("train"))
        done("train", ts)
    res["seconds"] = time.perf_counter() - t0
    write(res, out)
    return res


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    tiny = _TINY.value
    if _CHILD.value:
        n, remat, dtype = _CHILD.value.split(":")
        row = train_row(tiny, int(n), remat, 3 if tiny else _REPS.value, dtype)
        with open(_CHILD_JSON.value, "w") as f:
            json.dump(row, f)
        return
    unknown = set(_SECTIONS.value) - set(SECTIONS)
    if unknown:
        raise app.UsageError(f"unknown sections {sorted(unknown)}; known: {SECTIONS}")
    isolate = {"yes": True, "no": False}.get(_ISOLATE.value, jax.default_backend() != "cpu")
    print("JAX", jax.__version__, "devices:", jax.devices(), flush=True)
    res = run(tiny, _SECTIONS.value, _OUT.value, _BUDGET.value, isolate)
    js, md = write(res, _OUT.value)
    print(to_markdown(res))
    print(f"[gpu_check] wrote {js} and {md} in {res['seconds']:.0f}s")


if __name__ == "__main__":
    app.run(main)
