"""`linear(x, w) = x @ w` with a weight gradient laid out for XLA:CPU.

The reference is the plain `x @ w`; the two agree in value and gradients (tested). Why a
custom VJP: the weight gradient is `x^T g`, contracted over every token. When the weight
is narrow (d_out < d_in, e.g. an MLP's down projection), XLA:CPU computes it as a
[d_in, d_out] product with a narrow output at ~2.4x the time of the transposed product
`g^T x` (measured at [512, 128]^T [512, 32]: 0.13 vs 0.055 ms; BUILD_NOTES.md, issue 10).
So the backward pass forms the product with the wider side as its output columns and
transposes the (weight-sized, small) result; an optimization barrier keeps XLA from
folding the transpose back into the dot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def linear(x, w):
    """x [..., d_in] @ w [d_in, d_out] -> [..., d_out]."""
    return x @ w


def _linear_fwd(x, w):
    return x @ w, (x, w)


def _weight_grad(x, g):
    x2 = x.reshape(-1, x.shape[-1])
    g2 = g.reshape(-1, g.shape[-1])
    if g2.shape[1] >= x2.shape[1]:
        return x2.T @ g2  # output [d_in, d_out], the wide side last: the fast layout
    return jax.lax.optimization_barrier(g2.T @ x2).T


def _linear_bwd(res, g):
    x, w = res
    return (g @ w.T).astype(x.dtype), _weight_grad(x, g).astype(w.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


def reference_linear(x, w):
    """The plain matmul (autodiff's own gradient): the reference `linear` is tested against."""
    return jnp.matmul(x, w)
