"""A parametric family of local rules whose coefficients are meta-learned through sleep.

Registered at import time as `rule="parametric"`. Per head h (all coefficients are
unconstrained reals stored in `theta`, each of shape [H]):

    d   = alpha ** c_decay                       decay       (exp(c_decay * log alpha))
    a   = c_write * beta ** p_write              write strength
    b   = c_erase * beta ** p_erase              erase strength
    S'  = d S                                    decayed memory
    S_new = S' + a k v^T - b k (S'^T k)^T        = d (I - b k k^T) S + a k v^T

i.e. a learned combination of three local terms (decayed memory, Hebbian write, delta-rule
erase of what the decayed memory returns for k), each gated by a learned power of its gate
(exponent 0: ungated, 1: the gate itself). Powers keep d > 0 and gate signs fixed for any
real coefficient, and `alpha ** c` rescales the log-decay, as GDN's own decay does. Gates
are floored at the smallest normal float32 before the log, so 0 * log(0) never occurs.

The four built-in rules are exact points of the family (`parametric_point`):

    point           c_decay  c_write  p_write  c_erase  p_erase
    hebbian            0        1        0        0        1
    gated_hebbian      1        1        1        0        1
    delta              0        1        1        1        1
    gated_delta        1        1        1        1        1

(p_erase is immaterial where c_erase = 0; it is set to 1 so that moving c_erase away from 0
starts the beta-gated erase of the delta rules.) The default `init_theta` is the Hebbian
point; `to_parametric` turns a model of a built-in rule into the same function in this
family. At the Hebbian point the gradient w.r.t. p_erase is exactly zero (it multiplies
c_erase = 0); it becomes non-zero as soon as c_erase moves.

The family has a chunkwise-parallel form (`chunked_parametric`, used with
`ModelConfig(impl="chunked")`): with per-token log-decay log d, write strength a and erase
strength b it is `chunked.py`'s kernel (the WY form) with `a V` on the value side and `b K`
on the key side, tested against the per-token scan.

    theta = params.blocks[i]["mixer"]["theta"]     # {"decay": [H], "write": [H], ...}
    describe_theta(theta)["nearest"]               # which built-in the outer loop is near
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sleep_consolidation import rules
from sleep_consolidation.rules.chunked import chunk_form

NAME = "parametric"
COEFFS = ("decay", "write", "write_gate", "erase", "erase_gate")
POINTS: dict[str, tuple[float, ...]] = {
    # (decay, write, write_gate, erase, erase_gate), see the module docstring.
    "hebbian": (0.0, 1.0, 0.0, 0.0, 1.0),
    "gated_hebbian": (1.0, 1.0, 1.0, 0.0, 1.0),
    "delta": (0.0, 1.0, 1.0, 1.0, 1.0),
    "gated_delta": (1.0, 1.0, 1.0, 1.0, 1.0),
}
_TINY = float(jnp.finfo(jnp.float32).tiny)


def parametric_point(name: str, num_heads: int) -> dict[str, jax.Array]:
    """theta of the built-in rule `name` as a point of the family: {coeff: float32 [H]}."""
    if name not in POINTS:
        raise ValueError(f"unknown point {name!r}; known points: {', '.join(POINTS)}")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be an int >= 1, got {num_heads!r}")
    return {c: jnp.full((num_heads,), x, jnp.float32) for c, x in zip(COEFFS, POINTS[name])}


def init_theta(key, num_heads: int, d_k: int, d_v: int) -> dict[str, jax.Array]:
    """The Hebbian point (deterministic; `key` and the widths are unused)."""
    del key, d_k, d_v
    return parametric_point("hebbian", num_heads)


def strengths(theta, alpha, beta):
    """Per-token decay d, write strength a and erase strength b from the gates ([..., H]).

    Returns (log d, a, b); d = exp(log d) = alpha ** c_decay.
    """
    la = jnp.log(jnp.maximum(alpha, _TINY))
    lb = jnp.log(jnp.maximum(beta, _TINY))
    log_d = theta["decay"] * la
    a = theta["write"] * jnp.exp(theta["write_gate"] * lb)
    b = theta["erase"] * jnp.exp(theta["erase_gate"] * lb)
    return log_d, a, b


def update(S, k, v, alpha, beta, theta):
    """One token of one sequence: S [H, d_k, d_v], k [H, d_k], v [H, d_v], gates [H]."""
    log_d, a, b = strengths(theta, alpha, beta)
    S = jnp.exp(log_d)[:, None, None] * S
    read = jnp.einsum("hkv,hk->hv", S, k)
    return S + k[:, :, None] * (a[:, None] * v - b[:, None] * read)[:, None, :]


def chunked_parametric(S0, q, k, v, alpha, beta, theta, valid, chunk_size, *, remat=True):
    """Chunkwise-parallel form: batched [B, T, H, d] inputs -> (o [B, T, H, d_v], S_T).

    `chunked.py`'s kernel with this family's per-token log-decay log d, write strength a
    and erase strength b (`strengths`) in place of the built-ins' log alpha, beta and beta:
    per chunk, A = strictly_lower((b K) K^T * Gamma), U = (I + A)^-1 (a V),
    W = (I + A)^-1 (b K * exp(g)), with (I + A)^-1 by `chunked._unit_lower_inverse`
    (matmuls only). Masked (valid False) and padded positions get a = b = 0 and d = 1.
    """
    f32 = jnp.float32
    log_d, a, b = strengths(theta, alpha.astype(f32), beta.astype(f32))  # [B, T, H]
    return chunk_form(S0, q, k, v, log_d, a, b, valid, chunk_size, remat=remat)


def to_parametric(params, point: str | None = None):
    """A copy of `params` (any rule) with rule="parametric" and theta set to `point`.

    With `point=None` the point is `params.config.rule` (which must be a built-in), so the
    returned model computes the same function as `params` (up to float rounding). Every
    other weight is shared; ssm mixers gain (or have replaced) their "theta" entry.
    """
    cfg = params.config
    point = cfg.rule if point is None else point
    theta = parametric_point(point, cfg.num_heads)
    blocks = []
    for i, block in enumerate(params.blocks):
        if cfg.layout[i] == "ssm":
            block = {**block, "mixer": {**block["mixer"], "theta": dict(theta)}}
        blocks.append(block)
    return params.replace(blocks=tuple(blocks), config=dataclasses.replace(cfg, rule=NAME))


def describe_theta(theta) -> dict:
    """Summary of one layer's theta for reports: which rule did the outer loop find?

    Returns a dict with
      "coefficients": {coeff: [H floats]},
      "heads": per head {coeff: float, "nearest": point name, "distance": float},
      "nearest" / "distance": the built-in point closest to the head-mean coefficients.
    Distance is Euclidean over the five coefficients (c_decay, c_write, p_write, c_erase,
    p_erase) against the table in the module docstring.
    """
    missing = [c for c in COEFFS if c not in theta]
    if missing:
        raise ValueError(f"theta lacks {missing}; expected keys {COEFFS}")
    coef = {c: np.asarray(theta[c], np.float64).reshape(-1) for c in COEFFS}
    mat = np.stack([coef[c] for c in COEFFS], axis=-1)  # [H, 5]

    def nearest(x):
        dists = {p: float(np.linalg.norm(x - np.asarray(v))) for p, v in POINTS.items()}
        best = min(dists, key=dists.get)
        return best, dists[best]

    heads = []
    for h in range(mat.shape[0]):
        name, dist = nearest(mat[h])
        heads.append({**{c: float(mat[h, j]) for j, c in enumerate(COEFFS)}, "nearest": name})
        heads[-1]["distance"] = dist
    name, dist = nearest(mat.mean(axis=0))
    return {
        "coefficients": {c: [float(x) for x in coef[c]] for c in COEFFS},
        "heads": heads,
        "nearest": name,
        "distance": dist,
    }


rules.register_rule(NAME, update, init_theta, chunked=chunked_parametric, overwrite=True)

__all__ = [
    "COEFFS",
    "NAME",
    "POINTS",
    "chunked_parametric",
    "describe_theta",
    "init_theta",
    "parametric_point",
    "strengths",
    "to_parametric",
    "update",
]
