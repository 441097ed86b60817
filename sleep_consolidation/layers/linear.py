"""Matrix products laid out for XLA:CPU: `linear(x, w) = x @ w` for weights and
`matmul(a, b)` for the small batched products of the rule and of attention.

The reference is the plain `x @ w`; the two agree in value and gradients (tested). Why a
custom VJP: the weight gradient is `x^T g`, contracted over every token. When the weight
is narrow (d_out < d_in, e.g. an MLP's down projection), XLA:CPU computes it as a
[d_in, d_out] product with a narrow output at ~2.4x the time of the transposed product
`g^T x` (measured at [512, 128]^T [512, 32]: 0.13 vs 0.055 ms; BUILD_NOTES.md,
"Research-scale throughput").
So the backward pass forms the product with the wider side as its output columns and
transposes the (weight-sized, small) result; an optimization barrier keeps XLA from
folding the transpose back into the dot.

`matmul`: XLA:CPU runs a batched dot whose left operand is contracted over its
second-to-last axis (`swapaxes(a) @ b`, which is the form of every right-operand gradient,
`a^T g`) on a generic path at ~2.2x the time of the plain form (ten [2, 8, 2, 16, 16]
products: 306 vs 141 us, one core; BUILD_NOTES.md, "Research-scale throughput").
`transposed(a)` forms the
transpose as its own (cheap) op behind an optimization barrier, and `matmul`'s backward
uses it, so every product, forward and backward, is in the fast form.
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


def project(x, w, dtype: str | None = None):
    """`linear(x, w)` computed in `dtype` (`ModelConfig.compute_dtype`: "bfloat16" rounds
    both operands to it), the result returned in float32; None: float32 throughout."""
    if dtype is None:
        return linear(x, w)
    return linear(x.astype(dtype), w.astype(dtype)).astype(jnp.float32)


def matmul_in(a, b, dtype: str | None = None, *, transpose_b: bool = False):
    """`matmul` computed in `dtype` like `project`, the result in float32."""
    if dtype is None:
        return matmul(a, b, transpose_b=transpose_b)
    return matmul(a.astype(dtype), b.astype(dtype), transpose_b=transpose_b).astype(jnp.float32)


def transposed(a):
    """swapaxes(a, -1, -2), materialised: XLA may not fold it into the dot that reads it
    (as a left operand, that dot would take the slow path; see the module docstring)."""
    return jax.lax.optimization_barrier(_swap(a))


def matmul(a, b, *, transpose_b: bool = False):
    """a [..., m, k] @ b [..., k, n], or a @ b^T for b [..., n, k] with `transpose_b`
    (batch axes broadcast as in `jnp.matmul`); gradients in XLA:CPU's fast form."""
    return _matmul_nt(a, b) if transpose_b else _matmul_nn(a, b)


def _swap(x):
    return jnp.swapaxes(x, -1, -2)


def _unbroadcast(x, shape):
    """Sums a gradient over the batch axes its operand was broadcast along."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape[:-2]) if n == 1 and x.shape[i + lead] != 1
    )
    return jnp.sum(x, axes).reshape(shape) if axes else x


def _grads(a, b, da, db):
    return _unbroadcast(da, a.shape).astype(a.dtype), _unbroadcast(db, b.shape).astype(b.dtype)


# Each gradient is written as a product of the operands as they are, or of a materialised
# transpose, never as the transpose of a product (XLA would fold that transpose back into
# the dot, as a left operand contracted over its second-to-last axis).
@jax.custom_vjp
def _matmul_nn(a, b):
    return a @ b


_matmul_nn.defvjp(
    lambda a, b: (a @ b, (a, b)),
    lambda res, g: _grads(*res, g @ _swap(res[1]), transposed(res[0]) @ g),
)


@jax.custom_vjp
def _matmul_nt(a, b):
    return a @ _swap(b)


_matmul_nt.defvjp(
    lambda a, b: (a @ _swap(b), (a, b)),
    lambda res, g: _grads(*res, g @ res[1], transposed(g) @ res[0]),
)


def reference_matmul(a, b, *, transpose_b: bool = False):
    """The plain batched matmul (autodiff's own gradient): `matmul`'s reference."""
    return jnp.matmul(a, _swap(b) if transpose_b else b)


def reference_linear(x, w):
    """The plain matmul (autodiff's own gradient): the reference `linear` is tested against."""
    return jnp.matmul(x, w)
