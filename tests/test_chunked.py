"""Chunked (WY / UT form) rules against the per-token reference scan."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init

import sleep_consolidation as sc
from sleep_consolidation import rules
from sleep_consolidation.rules import chunked

BUILTINS = ("gated_delta", "delta", "gated_hebbian", "hebbian")
B, H, DK, DV = 2, 2, 16, 8


def _inputs(T, seed=0):
    """Realistic rule inputs (numpy RNG: no eager XLA compiles in the tests)."""
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    q = unit(rng.standard_normal((B, T, H, DK)))
    k = unit(rng.standard_normal((B, T, H, DK)))
    v = rng.standard_normal((B, T, H, DV))
    alpha = rng.uniform(0.5, 1.0, (B, T, H))
    # Near-total forgetting at a few positions (one of them a chunk start).
    for t, a in ((5, 1e-30), (16, 1e-6), (T - 2, 1e-3)):
        if 0 <= t < T:
            alpha[:, t, 0] = a
    beta = rng.uniform(0.05, 1.0, (B, T, H))
    S0 = rng.standard_normal((B, H, DK, DV))
    return tuple(jnp.asarray(x, jnp.float32) for x in (S0, q, k, v, alpha, beta))


def _rel(a, b):
    """Max-abs error relative to the reference's max-abs (0 when both are 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b))
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b)) / scale)


@pytest.mark.parametrize("name", BUILTINS)
# (7, 16): a chunk longer than the sequence is cut to it (one chunk of 7, no padding).
@pytest.mark.parametrize("T,C,masked", [(32, 8, False), (37, 16, True), (7, 16, True)])
def test_chunked_matches_scan(name, T, C, masked):
    rule = rules.get_rule(name)
    assert rule.chunked is chunked.CHUNKED[name]
    args = _inputs(T)
    valid = (np.arange(T) % 5 != 3) if masked else None
    keep = (np.ones(T, bool) if valid is None else valid)[None, :, None, None]

    def loss(fn):
        rng = np.random.default_rng(11)
        r_o = jnp.asarray(rng.standard_normal((B, T, H, DV)), jnp.float32)
        r_s = jnp.asarray(rng.standard_normal((B, H, DK, DV)), jnp.float32)

        def f(*a):
            o, S = fn(*a)
            return jnp.sum(jnp.where(keep, o * r_o, 0.0)) + jnp.sum(S * r_s), (o, S)

        return jax.jit(jax.value_and_grad(f, argnums=range(6), has_aux=True))

    scan = lambda *a: rules.scan_rule(rule, None, *a, valid)
    fast = lambda *a: rule.chunked(*a, None, valid, C)
    ((_, (o_ref, S_ref)), g_ref) = loss(scan)(*args)
    ((_, (o, S)), g) = loss(fast)(*args)
    assert o.shape == o_ref.shape and S.shape == S_ref.shape
    assert o.dtype == jnp.float32 and S.dtype == jnp.float32
    assert _rel(jnp.where(keep, o, 0.0), jnp.where(keep, o_ref, 0.0)) <= 1e-5
    assert _rel(S, S_ref) <= 1e-5
    for arg, gi, gi_ref in zip(("S0", "q", "k", "v", "alpha", "beta"), g, g_ref, strict=True):
        assert np.all(np.isfinite(gi)), arg
        assert _rel(gi, gi_ref) <= 1e-5, (arg, _rel(gi, gi_ref))


@pytest.mark.parametrize("name", BUILTINS)
def test_invalid_positions_leave_state_unchanged(name):
    T = 12
    S0, q, k, v, alpha, beta = _inputs(T, seed=3)
    fn = jax.jit(chunked.CHUNKED[name], static_argnums=(6, 8))
    _, S_masked = fn(S0, q, k, v, alpha, beta, None, np.arange(T) < 7, 4)
    cut = lambda x: x[:, :7]
    _, S_prefix = fn(S0, *map(cut, (q, k, v, alpha, beta)), None, None, 4)
    assert _rel(S_masked, S_prefix) <= 1e-6
    _, S_none = fn(S0, q, k, v, alpha, beta, None, np.zeros(T, bool), 4)
    np.testing.assert_array_equal(S_none, S0)
    # Fewer tokens than one chunk (all padding but 3 positions), against the scan.
    short = lambda x: x[:, :3]
    o, S = fn(S0, *map(short, (q, k, v, alpha, beta)), None, None, 4)
    o_ref, S_ref = rules.scan_rule(
        rules.get_rule(name), None, S0, *map(short, (q, k, v, alpha, beta))
    )
    assert _rel(o, o_ref) <= 1e-5 and _rel(S, S_ref) <= 1e-5


def test_remat_flag_and_jit():
    args = _inputs(20, seed=4)
    f = jax.jit(lambda *a: chunked.gated_delta(*a, None, None, 8, remat=False))
    g = jax.jit(lambda *a: chunked.gated_delta(*a, None, None, 8, remat=True))
    for x, y in zip(f(*args), g(*args), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_chunk_size_checked():
    with pytest.raises(ValueError, match="chunk_size"):
        chunked.delta(*_inputs(8), None, None, 0)


def test_user_rule_without_chunked_form_falls_back_to_scan():
    def leaky(S, k, v, alpha, beta, theta=None):
        return 0.9 * S + k[:, :, None] * v[:, None, :]

    name = "test_chunked_leaky"
    sc.register_rule(name, leaky, overwrite=True)
    rule = rules.get_rule(name)
    assert rule.chunked is None
    args = _inputs(9, seed=5)
    apply = jax.jit(functools.partial(rules.apply_rule, rule, None, impl="chunked", chunk_size=4))
    o, S = apply(*args)
    o_ref, S_ref = jax.jit(functools.partial(rules.scan_rule, rule, None))(*args)
    np.testing.assert_array_equal(o, o_ref)
    np.testing.assert_array_equal(S, S_ref)
    cfg = sc.ModelConfig(
        vocab_size=7, d_model=8, num_heads=2, layout=("ssm",), rule=name, impl="chunked"
    )
    params = init(cfg, 0)
    toks = jnp.asarray(np.random.default_rng(1).integers(0, 7, (1, 6)), jnp.int32)
    fwd = jax.jit(functools.partial(sc.forward, window=3, passes=2))
    ref = fwd(params.replace(config=dataclasses.replace(cfg, impl="scan")), toks)
    np.testing.assert_array_equal(fwd(params, toks), ref)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
@pytest.mark.parametrize("name", BUILTINS)
def test_forward_chunked_equals_scan(name):
    cfg = sc.ModelConfig(
        vocab_size=13, d_model=16, num_heads=2, layout=("attn", "ssm"), rule=name, chunk_size=4
    )
    params = init(cfg, 7)
    params_chunked = params.replace(config=dataclasses.replace(cfg, impl="chunked"))
    # gated_delta (the paper's rule) over three windows (6, 6, 3: consolidation, eviction and
    # a partial window); the others over one window that is consolidated (return_fast).
    T = 15 if name == "gated_delta" else 6
    toks = jnp.asarray(np.random.default_rng(8).integers(0, 13, (2, T)), jnp.int32)
    fwd = jax.jit(functools.partial(sc.forward, window=6, passes=2, return_fast=True))
    ref, fast_ref = fwd(params, toks)
    got, fast = fwd(params_chunked, toks)
    assert _rel(got, ref) <= 1e-5
    for x, y in zip(fast, fast_ref, strict=True):
        assert _rel(x, y) <= 1e-5
