"""The benchmarks' inputs: random token batches, model parameters and the inputs of one
pass of the gated delta rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import sleep_consolidation as sc

RULE_INPUTS = ("S0", "q", "k", "v", "alpha", "beta")  # the order the rule's functions take


def tokens(rng: np.random.Generator, batch: int, length: int, vocab: int) -> jax.Array:
    """Uniform random int32 tokens [batch, length]."""
    return jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32)


def init_params(cfg: sc.ModelConfig, seed: int = 0) -> sc.Params:
    return jax.jit(sc.init_params, static_argnums=0)(cfg, jax.random.key(seed))


def rule_inputs(
    rng: np.random.Generator, B: int, T: int, H: int, d: int, s0_last: bool = False
) -> dict[str, np.ndarray]:
    """float32 inputs of one rule pass: S0 [B, H, d, d] / d, unit q and k [B, T, H, d],
    v [B, T, H, d], alpha in [0.5, 1] and beta in [0, 1] [B, T, H].

    Drawn from `rng` in the order of RULE_INPUTS, or with S0 last (`s0_last`, the sleep
    section's order, kept so its inputs stay what they were).
    """
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    draw = {
        "S0": lambda: rng.standard_normal((B, H, d, d)) / d,
        "q": lambda: unit(rng.standard_normal((B, T, H, d))),
        "k": lambda: unit(rng.standard_normal((B, T, H, d))),
        "v": lambda: rng.standard_normal((B, T, H, d)),
        "alpha": lambda: rng.uniform(0.5, 1.0, (B, T, H)),
        "beta": lambda: rng.uniform(0.0, 1.0, (B, T, H)),
    }
    order = RULE_INPUTS[1:] + RULE_INPUTS[:1] if s0_last else RULE_INPUTS
    x = {name: np.asarray(draw[name](), np.float32) for name in order}
    return {name: x[name] for name in RULE_INPUTS}


def device_args(x: dict[str, np.ndarray], dtype=jnp.float32) -> tuple[jax.Array, ...]:
    """`rule_inputs` as device arrays in RULE_INPUTS order: S0 in f32, the rest in `dtype`."""
    return tuple(jnp.asarray(x[n], jnp.float32 if n == "S0" else dtype) for n in RULE_INPUTS)
