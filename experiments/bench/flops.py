"""FLOP counts from formulas (XLA's cost analysis counts a loop body once).

Imports nothing from the library, so the GPU check can use it without the training stack.
"""

from __future__ import annotations

from typing import Any


def scan_flops(L, d, H, B):
    """Per-token scan of the gated delta rule: decay d^2, read 2 d^2, write 2 d^2, readout
    2 d^2 (the decay is fused in practice: ~7 d^2 per token and head)."""
    return 7 * d * d * L * H * B


def chunk_flops(L, d, H, B, C):
    """Our chunk form per chunk and head: Q K^T, K K^T, (I+A)^-1 U and W (each 2 C^2 d),
    the triangular inverse (C^3 / 3), [W; Q] S (4 C d^2), P V_new (2 C^2 d), K^T V_new
    (2 C d^2): per token 6 d^2 + 10 C d + C^2 / 3."""
    return (6 * d * d + 10 * C * d + C * C / 3) * L * H * B


def model_flops_per_step(c: dict, spec: Any) -> float:
    """Training FLOPs of one step of config dict `c` resolved to `spec` (a RunSpec), from
    formulas (the counting rules are in experiments/bench/research.py's docstring)."""
    cfg, task = spec.model_config, spec.task
    D, H, dh = cfg.d_model, cfg.num_heads, cfg.dh
    T, L, N = task.seq_len, spec.window, c["passes"]
    f = D * cfg.mlp_ratio
    mlp = 2 * D * f
    attn_proj = 4 * D * H * dh
    ssm_proj = D * (4 * H * dh + 2 * H) + H * dh * D
    keys = (L + 1) / 2  # causal: position i sees i + 1 keys of its window
    per_pass = 0.0
    start, stop = spec.schedule.loop_range(cfg)
    looped = 0.0
    for i, kind in enumerate(cfg.layout):
        block = 2 * mlp + (
            2 * attn_proj + 4 * keys * H * dh if kind == "attn" else 2 * ssm_proj + 6 * H * dh**2
        )
        per_pass += block
        if start <= i < stop:
            looped += block
    consolidated = ((T - 1) // L) * L  # tokens of windows that are slept on
    fwd = T * per_pass + consolidated * (N - 1) * looped
    answers = len(task.answer_positions) if task.answer_positions else T
    fwd += answers * 2 * D * cfg.vocab_size
    return 3.0 * fwd * c["batch_size"]
