"""Local plasticity rules: how one token writes into a fast-weight matrix.

A rule is a pure function for ONE token of ONE sequence:

    update(S, k, v, alpha, beta, theta) -> S_new
    S: [H, d_k, d_v]   k: [H, d_k]   v: [H, d_v]   alpha, beta: [H]   theta: pytree or None

The readout `o = S_new^T q` is shared by all rules. The library adds batching (vmap) and
the scan over tokens (`scan_rule`). A rule may also provide a chunkwise-parallel form over a
stretch of tokens; `apply_rule` uses it when `impl="chunked"` and falls back to the scan
otherwise. `theta` (the rule's own parameters) lives inside the model params, so training
the model trains the rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Rule:
    """A registered rule: its per-token update, optional theta initialiser and fast form."""

    name: str
    update: Callable[..., jax.Array]
    init_theta: Callable[..., Any] | None = None
    # chunked(S0, q, k, v, alpha, beta, theta, valid, chunk_size) -> (o, S_T), batched
    # [B, T, H, d] inputs; must agree with `scan_rule` (tested).
    chunked: Callable[..., tuple[jax.Array, jax.Array]] | None = None


_RULES: dict[str, Rule] = {}


def register_rule(
    name: str,
    update: Callable[..., jax.Array],
    init_theta: Callable[..., Any] | None = None,
    *,
    chunked: Callable[..., tuple[jax.Array, jax.Array]] | None = None,
    overwrite: bool = False,
) -> Rule:
    """Registers a local rule under `name`.

    Args:
      name: the name `ModelConfig(rule=...)` and the configs refer to.
      update: `update(S, k, v, alpha, beta, theta) -> S_new` for one token of one sequence.
      init_theta: `init_theta(key, num_heads, d_k, d_v) -> theta` pytree, or None.
      chunked: optional batched chunkwise-parallel form (see `Rule.chunked`).
      overwrite: allow replacing an existing rule of the same name.

    Returns:
      The registered `Rule`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"rule name must be a non-empty string, got {name!r}")
    if not callable(update):
        raise ValueError(f"update for rule {name!r} must be callable")
    if init_theta is not None and not callable(init_theta):
        raise ValueError(f"init_theta for rule {name!r} must be callable or None")
    if name in _RULES and not overwrite:
        raise ValueError(f"rule {name!r} is already registered; pass overwrite=True to replace it")
    rule = Rule(name, update, init_theta, chunked)
    _RULES[name] = rule
    return rule


def available_rules() -> tuple[str, ...]:
    return tuple(sorted(_RULES))


def get_rule(name: str) -> Rule:
    if name not in _RULES:
        raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(available_rules())}")
    return _RULES[name]


def init_theta(name: str, key: jax.Array, num_heads: int, d_k: int, d_v: int):
    """The rule's own parameters (None for rules without any)."""
    rule = get_rule(name)
    return None if rule.init_theta is None else rule.init_theta(key, num_heads, d_k, d_v)


# --- built-in rules (per token, per sequence; S is [H, d_k, d_v]) ---------------------------


def _write(S, k, v_new, beta):
    """S + beta * k v_new^T, per head."""
    return S + beta[:, None, None] * k[:, :, None] * v_new[:, None, :]


def _read(S, k):
    """S^T k per head: what S currently returns for key k."""
    return jnp.einsum("hkv,hk->hv", S, k)


def gated_delta(S, k, v, alpha, beta, theta=None):
    """Gated DeltaNet: S <- alpha S + beta k (v - alpha S^T k)^T (the paper's rule)."""
    S = alpha[:, None, None] * S
    return _write(S, k, v - _read(S, k), beta)


def delta(S, k, v, alpha, beta, theta=None):
    """DeltaNet: S <- S + beta k (v - S^T k)^T (no decay)."""
    return _write(S, k, v - _read(S, k), beta)


def gated_hebbian(S, k, v, alpha, beta, theta=None):
    """The paper's eq. 3 (Mamba-2 style): S <- alpha S + beta k v^T."""
    return _write(alpha[:, None, None] * S, k, v, beta)


def hebbian(S, k, v, alpha, beta, theta=None):
    """Linear attention: S <- S + k v^T (gates unused)."""
    return S + k[:, :, None] * v[:, None, :]


from sleep_consolidation.rules import chunked as _chunked  # noqa: E402  (imports only jax)

for _name, _fn in (
    ("gated_delta", gated_delta),
    ("delta", delta),
    ("gated_hebbian", gated_hebbian),
    ("hebbian", hebbian),
):
    register_rule(_name, _fn, chunked=_chunked.CHUNKED[_name])


# --- batching and the scan over tokens -----------------------------------------------------


def readout(S, q):
    """o = S^T q for batched S [B, H, d_k, d_v] and q [B, H, d_k] -> [B, H, d_v]."""
    return jnp.einsum("bhkv,bhk->bhv", S, q)


def rule_step(rule: Rule, theta, S, q, k, v, alpha, beta):
    """One token for a batch: S [B,H,dk,dv]; q,k [B,H,dk]; v [B,H,dv]; gates [B,H]."""
    S_new = jax.vmap(rule.update, in_axes=(0, 0, 0, 0, 0, None))(S, k, v, alpha, beta, theta)
    return S_new, readout(S_new, q)


def scan_rule(rule: Rule, theta, S0, q, k, v, alpha, beta, valid=None):
    """Reference form: applies `rule` token by token with `lax.scan`.

    Args:
      S0: [B, H, d_k, d_v] float32 fast weights before the first token.
      q, k: [B, T, H, d_k]; v: [B, T, H, d_v]; alpha, beta: [B, T, H].
      valid: optional bool [T]; tokens where it is False leave S unchanged.

    Returns:
      (o [B, T, H, d_v], S_T [B, H, d_k, d_v]).
    """
    T = q.shape[1]
    if valid is None:
        valid = jnp.ones((T,), bool)

    def step(S, xs):
        q_t, k_t, v_t, a_t, b_t, m_t = xs
        S_new, o_t = rule_step(rule, theta, S, q_t, k_t, v_t, a_t, b_t)
        S_new = jnp.where(m_t, S_new, S)
        return S_new, o_t

    time_major = [jnp.moveaxis(x, 1, 0) for x in (q, k, v, alpha, beta)]
    S_T, o = jax.lax.scan(step, S0, (*time_major, valid))
    return jnp.moveaxis(o, 0, 1), S_T


def apply_rule(
    rule: Rule, theta, S0, q, k, v, alpha, beta, valid=None, *, impl="scan", chunk_size=32
):
    """Dispatches to the rule's chunked form when asked for and available, else the scan."""
    if impl == "chunked" and rule.chunked is not None:
        return rule.chunked(S0, q, k, v, alpha, beta, theta, valid, chunk_size)
    return scan_rule(rule, theta, S0, q, k, v, alpha, beta, valid)
