"""Where a compiled step's time goes: a JAX profiler trace, each op mapped to a category.

XLA:CPU traces every executed thunk (fusions, dots, while loops and the ops inside them)
with its HLO name. The compiled module's text carries, for every HLO instruction, a stack
frame id whose chain of Python function names says which library code produced it; the
innermost recognised function names the category. This is experiment tooling (it writes
trace files under a temporary directory), so it lives in `experiments/`, not the library.

Categories: rule (rules/__init__.py, chunked.py), attention (attention.py core: scores, softmax,
RoPE), batched_matmul_grad (the gradients of the rule's and attention's batched products,
`linear.matmul`: its custom VJP keeps only that frame, so the two cannot be told apart),
projections_mlp (matmuls of every block's projections and MLP), norms_elementwise
(RMSNorm, L2 norm, conv, gates, residuals), loss (cross-entropy and the logits), optimizer
(optax), other (what none of these claims: copies between loops, concatenations).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from collections.abc import Callable

import jax

# Innermost function name -> category (checked from the innermost frame outwards).
_FUNCTION_CATEGORY = {
    "chunk_form": "rule",
    "chunk_form.<locals>.body": "rule",
    "scan_rule": "rule",
    "rule_step": "rule",
    "readout": "rule",
    "_unit_lower_inverse": "rule",
    "_block_inverse": "rule",
    "_forward_substitution": "rule",
    "_decays": "rule",
    "_attend": "attention",
    "rope": "attention",
    "_prefix_mask": "attention",
    "rms_norm": "norms_elementwise",
    "_l2_normalize": "norms_elementwise",
    "gates": "norms_elementwise",
    "_features": "norms_elementwise",
    "_mlp": "projections_mlp",
    "_project": "projections_mlp",
    "_qkv": "projections_mlp",
    "_output": "projections_mlp",
    "linear": "projections_mlp",
    "_linear_fwd": "projections_mlp",
    "_linear_bwd": "projections_mlp",
    "_weight_grad": "projections_mlp",
    "logits": "loss",
    "masked_cross_entropy": "loss",
    "embed": "loss",
}
# Used only when no outer frame is recognised: `linear.matmul`'s forward products find their
# caller (the rule, attention) further out; its backward products keep only its own frame.
_FALLBACK_CATEGORY = {"matmul": "batched_matmul_grad"}
_FILE_CATEGORY = {"optax": "optimizer", "rules/chunked.py": "rule", "rules/__init__.py": "rule"}
CATEGORIES = (
    "rule",
    "attention",
    "batched_matmul_grad",
    "projections_mlp",
    "norms_elementwise",
    "loss",
    "optimizer",
    "other",
)
# Trace events that are not ops of the compiled program.
_NOT_OPS = ("ThunkExecutor", "$", "PjitFunction", "ProcessEntry", "Thunk::")


def _tables(hlo: str):
    """Parses the FileNames / FunctionNames / FileLocations / StackFrames tables."""
    sections: dict[str, dict[int, str]] = {}
    current = None
    for line in hlo.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = sections.setdefault(line, {})
            continue
        if current is None:
            continue
        m = re.match(r"(\d+) (.*)", line)
        if m:
            current[int(m.group(1))] = m.group(2)
        elif line.strip():
            current = None
    files = {k: v.strip('"') for k, v in sections.get("FileNames", {}).items()}
    funcs = {k: v.strip('"') for k, v in sections.get("FunctionNames", {}).items()}
    locs = {}
    for k, v in sections.get("FileLocations", {}).items():
        f = re.search(r"file_name_id=(\d+)", v)
        fn = re.search(r"function_name_id=(\d+)", v)
        file = files.get(int(f.group(1)), "") if f else ""
        locs[k] = (file, funcs.get(int(fn.group(1)), "") if fn else "")
    frames = {}
    for k, v in sections.get("StackFrames", {}).items():
        loc = re.search(r"file_location_id=(\d+)", v)
        parent = re.search(r"parent_frame_id=(\d+)", v)
        frames[k] = (int(loc.group(1)) if loc else 0, int(parent.group(1)) if parent else 0)
    return locs, frames


def _frame_chain(frame_id: int, locs, frames):
    """(file, function) pairs from the innermost frame outwards."""
    out, seen = [], set()
    while frame_id and frame_id not in seen:
        seen.add(frame_id)
        loc_id, parent = frames.get(frame_id, (0, 0))
        out.append(locs.get(loc_id, ("", "")))
        frame_id = parent if parent != frame_id else 0
    return out


def _category(chain, op_name: str) -> str:
    for file, func in chain:
        if func in _FUNCTION_CATEGORY:
            return _FUNCTION_CATEGORY[func]
        for key, cat in _FILE_CATEGORY.items():
            if key in file:
                return cat
    if "optax" in op_name or "/adam" in op_name:
        return "optimizer"
    for _, func in chain:
        if func in _FALLBACK_CATEGORY:
            return _FALLBACK_CATEGORY[func]
    return "other"


def op_categories(hlo: str) -> dict[str, str]:
    """HLO instruction name -> category, for every instruction of the compiled module."""
    locs, frames = _tables(hlo)
    out = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{([^}]*)\}", line)
        if not m:
            continue
        meta = m.group(2)
        sf = re.search(r"stack_frame_id=(\d+)", meta)
        name = re.search(r'op_name="([^"]*)"', meta)
        chain = _frame_chain(int(sf.group(1)), locs, frames) if sf else []
        out[m.group(1)] = _category(chain, name.group(1) if name else "")
    return out


def profile(fn: Callable, args: tuple, steps: int = 10) -> dict:
    """Runs `fn(*args)` (a jitted or an AOT-compiled function) `steps` times under the
    profiler.

    Returns:
      {"ms_per_call": wall ms per call, "ops_per_call": executed ops per call,
       "by_category_ms": {category: ms per call}, "top_ops": [(name, category, ms)]}.
      Op times are the profiler's; loops are counted once as the while op, and the ops
      inside them are attributed too, so category sums can exceed the wall time: the
      shares are reported against the sum over top-level ops only.
    """
    compiled = fn.lower(*args).compile() if hasattr(fn, "lower") else fn  # jitted or compiled
    cats = op_categories(compiled.as_text())
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(fn(*args))
        wall = (time.perf_counter() - t0) / steps * 1e3
        paths = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
        if not paths:
            raise RuntimeError(f"the profiler wrote no perfetto trace under {d}")
        with gzip.open(paths[0]) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_op = collections.Counter()
    count = 0
    for e in events:
        if e.get("ph") != "X" or e["name"].startswith(_NOT_OPS):
            continue
        per_op[e["name"]] += e.get("dur", 0.0)
        count += 1
    by_cat = collections.Counter()
    for name, us in per_op.items():
        if name.startswith("while"):
            continue  # its body's ops are traced one by one and categorised themselves
        by_cat[cats.get(name, "other")] += us / steps / 1e3
    top = [(n, cats.get(n, "other"), us / steps / 1e3) for n, us in per_op.most_common(12)]
    return {
        "ms_per_call": wall,
        "ops_per_call": count / steps,
        "by_category_ms": {c: by_cat.get(c, 0.0) for c in CATEGORIES},
        "top_ops": top,
    }
