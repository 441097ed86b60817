"""`layers/loops.py`: `loops.scan` (short loops unrolled) against `lax.scan`, and the
`unroll_limit` context."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_consolidation.layers import loops


@pytest.mark.parametrize("n", [0, 1, 3, 9])
def test_loops_scan_matches_lax_scan(n):
    xs = jnp.arange(max(n, 1) * 3, dtype=jnp.float32).reshape(max(n, 1), 3)[:n]

    def f(c, x):
        return c * 0.5 + jnp.sin(x), (c.sum(), x * c)

    def total(c0, fn):
        c, (s, y) = fn(f, c0, xs)
        return c.sum() + s.sum() + y.sum()

    c0 = jnp.ones(3)
    ref = jax.value_and_grad(lambda c: total(c, jax.lax.scan))(c0)
    got = jax.value_and_grad(lambda c: total(c, loops.scan))(c0)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-6)
    carry, ys = loops.scan(lambda c, _: (c + 1, None), 0.0, None, length=3)
    assert float(carry) == 3.0 and ys is None


def test_unroll_limit_restores_the_default_and_refuses_bad_limits():
    default = loops.MAX_UNROLL
    with loops.unroll_limit(0):
        assert loops.MAX_UNROLL == 0
    assert loops.MAX_UNROLL == default
    with pytest.raises(RuntimeError), loops.unroll_limit(1):
        raise RuntimeError("restored on error too")
    assert loops.MAX_UNROLL == default
    with pytest.raises(ValueError, match="limit must be an int >= 0"):
        with loops.unroll_limit(-1):
            pass
