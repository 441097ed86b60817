"""A new local rule, registered at import: Oja-style Hebbian learning with a learned rate.

    S <- alpha S + eta_h beta (k v^T - S v v^T)        (per head h; eta_h in theta, init 0.5)

The Hebbian write k v^T is balanced by Oja's forgetting term S v v^T, which keeps S bounded
without the delta rule's read-out. Train it through sleep with the usual outer loop:

    python -m experiments.train --config=experiments/configs/recall.py:tiny \
        --config.rule=oja --config.rule_module=examples.custom_rule --workdir=/tmp/oja
"""

import jax.numpy as jnp

import sleep_consolidation as sc


def oja(S, k, v, alpha, beta, theta):
    """One token: S [H, d_k, d_v], k [H, d_k], v [H, d_v], alpha/beta [H], theta {"lr": [H]}."""
    rate = (theta["lr"] * beta)[:, None, None]
    forget = jnp.einsum("hkv,hv->hk", S, v)[:, :, None] * v[:, None, :]  # S v v^T
    return alpha[:, None, None] * S + rate * (k[:, :, None] * v[:, None, :] - forget)


def init_theta(key, num_heads, d_k, d_v):
    return {"lr": jnp.full((num_heads,), 0.5, jnp.float32)}


sc.register_rule("oja", oja, init_theta, overwrite=True)  # overwrite: safe to re-import
