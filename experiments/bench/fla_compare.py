"""fla's Triton `chunk_gated_delta_rule` side by side with ours (the GPU check's fla part):
the same inputs on the same chip, timed interleaved with our variants, when `fla`
(fla-core), torch and a CUDA device are there.

Conventions (read from fla's own naive reference): q, k, v [B, T, H, d], state
[B, H, d_k, d_v], gate g = log(alpha) (log space), beta post-sigmoid, the output read after
the write; our readout has no 1/sqrt(d) so scale=1.0; q and k are l2-normalised by us (not
in the kernel).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from experiments.bench import measure


def load():
    """(torch, chunk_gated_delta_rule), or a string saying why not."""
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


def to_torch(torch, x):
    """A jax array -> a CUDA torch tensor with the same bits (bfloat16 via an int16 view)."""
    a = np.asarray(x)
    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).cuda().view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a)).cuda()


def side_by_side(loaded, args, ref, mine) -> tuple[dict, Callable | None]:
    """Runs fla's kernel once on our rule inputs `args` (S0, q, k, v, alpha, beta).

    Returns (its errors against the f32 scan `ref` and against our outputs `mine`, a
    zero-argument call to time), or ({"error": ...}, None) if it fails.
    """
    torch, kernel = loaded
    tq, tk, tv, tb = (to_torch(torch, a) for a in args[1:4] + args[5:6])
    tg = torch.log(to_torch(torch, args[4]).float())  # log-space gate, f32
    th0 = to_torch(torch, args[0])

    def run_fla(kernel=kernel, a=(tq, tk, tv, tg, tb), h0=th0):
        return kernel(*a, scale=1.0, initial_state=h0, output_final_state=True)

    try:
        o_fla, S_fla = run_fla()
        torch.cuda.synchronize()
        o_np, S_np = (t.float().cpu().numpy() for t in (o_fla, S_fla))
        info = {
            "rel_err_o_vs_f32_scan": measure.rel_err(o_np, ref[0]),
            "rel_err_S_vs_f32_scan": measure.rel_err(S_np, ref[1]),
            "rel_err_o_vs_ours": measure.rel_err(o_np, mine[0]),
            "rel_err_S_vs_ours": measure.rel_err(S_np, mine[1]),
        }
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}, None
    return info, lambda f=run_fla, sync=torch.cuda.synchronize: (f(), sync())[1]


def row(case: dict, info: dict, t: dict, ours_name: str) -> dict:
    """fla's row for one (B, dtype) `case`: its errors `info` and, if it was timed (`t`
    holds "fla"), its time and that of our variant `ours_name` over it."""
    out = {**case, **info}
    if "fla" in t:
        out.update(t["fla"])
        out["tokens_per_s"] = case["B"] * case["T"] / t["fla"]["median_s"]
        out["ours_variant"] = ours_name
        out["ours_over_fla"] = t[ours_name]["median_s"] / t["fla"]["median_s"]
    return out


def section(loaded, rows: list[dict], ours_name: str) -> dict:
    """The fla part of the report: versions and rows, or why fla was not run."""
    if isinstance(loaded, str):
        return {"available": False, "reason": loaded, "rows": []}
    import fla as fla_pkg

    return {"available": True, "version": getattr(fla_pkg, "__version__", None),
            "torch": loaded[0].__version__, "rows": rows, "ours_variant": ours_name}  # fmt: skip


def markdown(sec: dict) -> list[str]:
    lines = ["## fla's Triton chunk_gated_delta_rule on the same inputs", ""]
    if not sec["available"]:
        return lines + [sec["reason"], ""]
    lines += [f"fla {sec['version']}, torch {sec['torch']}; ours = {sec['ours_variant']}; "
              "g = log(alpha) in f32, scale=1.0, initial state S0.", "",
              "| B | dtype | fla ms (min-max) | tokens/s | ours / fla | rel err o vs "
              "f32 scan | vs ours | rel err S vs f32 scan | vs ours |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sec["rows"]:
        if "error" in r:
            lines.append(f"| {r['B']} | {r['dtype']} | error: {r['error']} |")
            continue
        lines.append(
            f"| {r['B']} | {r['dtype']} | {measure.ms_range(r)} | "
            f"{r['tokens_per_s']:.3g} | {r['ours_over_fla']:.2f}x | "
            f"{r['rel_err_o_vs_f32_scan']:.1e} | {r['rel_err_o_vs_ours']:.1e} | "
            f"{r['rel_err_S_vs_f32_scan']:.1e} | {r['rel_err_S_vs_ours']:.1e} |"
        )
    return lines + [""]
