"""Chunked (WY / UT form) rules against the per-token reference scan."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init, random_tokens, tiny_config

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


# (7, 16): a chunk longer than the sequence is cut to it (one chunk of 7, no padding).
SHAPES = [(32, 8, False), (37, 16, True), (7, 16, True)]
# By default the paper's rule at every shape and the others at the masked, padded one (the
# rules share `chunk_form`; they differ in its decay and erase inputs); the rest -m slow.
_GRID = [
    pytest.param(name, *shape, marks=()
                 if name == "gated_delta" or shape == (37, 16, True) else pytest.mark.slow)
    for name in BUILTINS
    for shape in SHAPES
]  # fmt: skip


@pytest.mark.parametrize("name,T,C,masked", _GRID)
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


def _tree_max_abs(tree):
    return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


# Checkpointing cannot change a forward (the same program runs), only what backprop keeps
# and recomputes: the remat tests compare gradients. Tolerance: under remat the backward
# recomputes the forward inside a different XLA program (other fusions; under forward's
# remat the pass loop also stays a lax.scan instead of being unrolled), so float32 sums
# are reordered; a few ulp per op over the chunks/windows/passes stays far below 1e-5
# relative, while a wrong recomputation (a stale carry, a dropped pass) is O(1) off.
def test_rule_remat_gives_the_same_gradients():
    """`remat=True` (jax.checkpoint on the chunk body) vs False: the same gradients wrt
    every input, under jit."""
    args = _inputs(20, seed=4)
    rng = np.random.default_rng(12)
    r_o = jnp.asarray(rng.standard_normal((B, 20, H, DV)), jnp.float32)
    r_s = jnp.asarray(rng.standard_normal((B, H, DK, DV)), jnp.float32)

    def grads(remat):
        def loss(*a):
            o, S = chunked.gated_delta(*a, None, None, 8, remat=remat)
            return jnp.sum(o * r_o) + jnp.sum(S * r_s)

        return jax.jit(jax.grad(loss, argnums=range(6)))(*args)

    want = grads(False)
    assert _tree_max_abs(want) > 1e-3  # a gradient that can differ
    # atol as in the test below: entries that cancel to ~0 carry the rounding of the O(1)
    # gradients, and the summation order of two fusions differs between CPU models.
    chex.assert_trees_all_close(grads(True), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # three compiled gradients through sleep (~30 s idle); CI runs -m slow
def test_forward_remat_gives_the_same_gradients():
    """`forward(..., remat=...)` "none" vs "pass", "window", "window+pass" (chunked rule): the
    same gradients wrt the params of a loss over three windows (two consolidated with
    N=2 passes), so the recomputed sleep passes are on the gradient's path. (The scan rule
    with attention too: test_model.py's slow test_remat_gives_same_gradients.)"""
    cfg = tiny_config(layout=("ssm",), impl="chunked", chunk_size=2)
    params = init(cfg, 0)
    toks = random_tokens(5, 2, 11)
    readout = jnp.asarray(np.random.default_rng(13).standard_normal((2, 11, 11)), jnp.float32)

    @functools.partial(jax.jit, static_argnums=1)
    def grads(p, remat):
        loss = lambda p: jnp.sum(sc.forward(p, toks, window=4, passes=2, remat=remat) * readout)
        return jax.grad(loss)(p)

    want = grads(params, "none")
    assert _tree_max_abs(want.blocks[0]["mixer"]) > 1e-3  # the fast-weight layer's gradient
    # atol: these gradients are O(1-10) (a sum over 2*11*11 readout terms), so entries that
    # cancel to ~0 carry the absolute rounding of that scale (1.4e-6 seen); 1e-5 of it.
    for remat in ("pass", "window", "window+pass"):
        chex.assert_trees_all_close(grads(params, remat), want, rtol=1e-5, atol=1e-5)


def test_chunk_size_checked():
    with pytest.raises(ValueError, match="chunk_size"):
        chunked.delta(*_inputs(8), None, None, 0)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
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
    toks = random_tokens(1, 1, 6, vocab=7)
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
    toks = random_tokens(8, 2, T, vocab=13)
    fwd = jax.jit(functools.partial(sc.forward, window=6, passes=2, return_fast=True))
    ref, fast_ref = fwd(params, toks)
    got, fast = fwd(params_chunked, toks)
    assert _rel(got, ref) <= 1e-5
    for x, y in zip(fast, fast_ref, strict=True):
        assert _rel(x, y) <= 1e-5
