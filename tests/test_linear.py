"""`layers/linear.py`: `linear` and `matmul` against the plain matmul (their references) in
value and gradients, and the point of `matmul` (no slow-form dot in its gradient)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_consolidation.layers import linear


@pytest.mark.parametrize("shape_in, d_out", [((2, 5, 16), 64), ((7, 64), 16), ((3, 4, 8), 8)])
def test_linear_equals_the_plain_matmul_in_value_and_gradients(shape_in, d_out):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape_in)
    w = jax.random.normal(kw, (shape_in[-1], d_out))
    g = jax.random.normal(kg, (*shape_in[:-1], d_out))
    for fn in (linear.linear, linear.reference_linear):
        np.testing.assert_allclose(fn(x, w), x @ w, rtol=1e-6, atol=1e-6)
    want = jax.vjp(linear.reference_linear, x, w)[1](g)
    got = jax.jit(jax.vjp(linear.linear, x, w)[1])(g)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize(
    "shape_a, shape_b",
    [
        ((2, 3, 4, 5, 6), (2, 3, 4, 6, 7)),  # the rule's [n, B, H, C, d] products
        ((4, 5, 6), (6, 7)),  # b broadcast over a's batch axis
        ((5, 6), (3, 1, 6, 7)),  # a broadcast, and a size-1 batch axis of b
    ],
)
def test_matmul_equals_the_plain_matmul_in_value_and_gradients(shape_a, shape_b, transpose_b):
    ka, kb, kg = jax.random.split(jax.random.key(1), 3)
    a = jax.random.normal(ka, shape_a)
    b = jax.random.normal(kb, shape_b)
    if transpose_b:
        b = jnp.swapaxes(b, -1, -2)
    fast = lambda a, b: linear.matmul(a, b, transpose_b=transpose_b)
    ref = lambda a, b: linear.reference_matmul(a, b, transpose_b=transpose_b)
    out = ref(a, b)
    np.testing.assert_allclose(jax.jit(fast)(a, b), out, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, out.shape)
    want = jax.vjp(ref, a, b)[1](g)
    got = jax.jit(jax.vjp(fast, a, b)[1])(g)
    for x, y in zip(got, want, strict=True):
        chex.assert_equal_shape((x, y))
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_matmul_gradients_have_no_slow_form_dots():
    """The point of `matmul`: no gradient dot contracts its left operand over its
    second-to-last axis (XLA:CPU's slow path); the plain matmul's gradient has one."""
    a = jnp.ones((2, 3, 8, 8))
    b = jnp.ones((2, 3, 8, 8))

    def lhs_transposed_dots(fn):
        grad = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.sin(fn(a, b))), (0, 1)))
        hlo = grad.lower(a, b).compile().as_text()
        return hlo.count("lhs_contracting_dims={2}")

    assert lhs_transposed_dots(linear.reference_matmul) >= 1
    assert lhs_transposed_dots(linear.matmul) == 0
