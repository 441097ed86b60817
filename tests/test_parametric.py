"""The parametric rule family: built-in points, the model, gradients, the chunked form."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

import sleep_consolidation as sc
from sleep_consolidation import rules
from sleep_consolidation.rules import parametric

H, DK, DV = 2, 4, 3
BUILTINS = ("hebbian", "gated_hebbian", "delta", "gated_delta")
LAYOUT = ("attn", "ssm")  # one of each keeps compile times low
fwd = jax.jit(sc.forward, static_argnames=("window", "passes"))


def _inputs(seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    S = jax.random.normal(ks[0], (H, DK, DV))
    k = jax.random.normal(ks[1], (H, DK))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(ks[2], (H, DV))
    alpha = jax.random.uniform(ks[3], (H,), minval=0.05, maxval=1.0)
    beta = jax.random.uniform(ks[4], (H,))
    return S, k, v, alpha, beta


def _random_theta(seed, num_heads=H):
    key = jax.random.key(seed)
    return {
        c: 0.5 + 0.5 * jax.random.normal(jax.random.fold_in(key, i), (num_heads,))
        for i, c in enumerate(parametric.COEFFS)
    }


def test_registered_and_default_is_hebbian():
    assert "parametric" in sc.available_rules()
    theta = rules.init_theta("parametric", jax.random.key(0), 3, 4, 4)
    chex.assert_trees_all_equal(theta, parametric.parametric_point("hebbian", 3))
    assert describe_nearest(theta) == "hebbian"


def describe_nearest(theta):
    d = parametric.describe_theta(theta)
    assert all(h["nearest"] == d["nearest"] for h in d["heads"])
    return d["nearest"]


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_token_update_equals_builtin(name, seed):
    S, k, v, alpha, beta = _inputs(seed)
    want = rules.get_rule(name).update(S, k, v, alpha, beta, None)
    got = parametric.update(S, k, v, alpha, beta, parametric.parametric_point(name, H))
    chex.assert_trees_all_close(got, want, atol=1e-6, rtol=1e-6)
    assert describe_nearest(parametric.parametric_point(name, H)) == name


# By default the two ends (hebbian: ungated, no erase; gated_delta: both); every point's
# per-token update is checked above by default; the other two whole models -m slow.
@pytest.mark.parametrize(
    "name",
    [n if n in ("hebbian", "gated_delta") else pytest.param(n, marks=pytest.mark.slow)
     for n in BUILTINS],
)  # fmt: skip
def test_forward_at_point_equals_builtin_model(name):
    params = sc.init_params(tiny_config(rule=name, layout=LAYOUT), jax.random.key(0))
    # Build the parametric model's own params, then copy every other weight across.
    p_param = sc.init_params(tiny_config(rule="parametric", layout=LAYOUT), jax.random.key(5))
    blocks = []
    for b_builtin, b_param in zip(params.blocks, p_param.blocks):
        block = dict(b_builtin)
        if "theta" in b_param["mixer"]:
            theta = parametric.parametric_point(name, 2)
            block["mixer"] = {**b_builtin["mixer"], "theta": theta}
        blocks.append(block)
    p_param = p_param.replace(
        embed=params.embed,
        blocks=tuple(blocks),
        final_norm=params.final_norm,
        unembed=params.unembed,
    )
    assert jax.tree_util.tree_structure(p_param) == jax.tree_util.tree_structure(
        parametric.to_parametric(params)
    )
    chex.assert_trees_all_close(p_param, parametric.to_parametric(params))
    tokens = jax.random.randint(jax.random.key(1), (2, 11), 0, 11)
    want = fwd(params, tokens, window=4, passes=3)
    got = fwd(p_param, tokens, window=4, passes=3)
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_gradients_wrt_theta_nonzero_and_finite_through_sleep():
    cfg = tiny_config(rule="parametric", layout=LAYOUT)
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 11)
    w = jax.random.normal(jax.random.key(2), (2, 12, 11))

    def loss(p):
        return jnp.sum(w * sc.forward(p, tokens, window=4, passes=3))

    grad = jax.jit(jax.grad(loss))
    base = sc.init_params(cfg, jax.random.key(0))
    ssm = cfg.ssm_blocks
    # At the Hebbian init every coefficient but p_erase (which multiplies c_erase = 0) moves.
    g0 = grad(base)
    for b in ssm:
        for c, g in g0.blocks[b]["mixer"]["theta"].items():
            assert np.all(np.isfinite(g)), c
            if c == "erase_gate":
                np.testing.assert_array_equal(g, 0.0)
            else:
                assert np.all(np.abs(g) > 0), (b, c, g)
    # At a generic point every coefficient of every head has a non-zero, finite gradient.
    blocks = list(base.blocks)
    for j, b in enumerate(ssm):
        blocks[b] = {**blocks[b], "mixer": {**blocks[b]["mixer"], "theta": _random_theta(j)}}
    g1 = grad(base.replace(blocks=tuple(blocks)))
    for b in ssm:
        for c, g in g1.blocks[b]["mixer"]["theta"].items():
            assert np.all(np.isfinite(g)) and np.all(np.abs(g) > 0), (b, c, g)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
@pytest.mark.parametrize("point", [None, "hebbian", "delta"])
def test_chunked_form_matches_scan(point):
    B, T, C = 2, 37, 8
    ks = jax.random.split(jax.random.key(3), 6)
    q = jax.random.normal(ks[0], (B, T, H, DK))
    k = jax.random.normal(ks[1], (B, T, H, DK))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(ks[2], (B, T, H, DV))
    alpha = jax.random.uniform(ks[3], (B, T, H), minval=0.5, maxval=1.0)
    beta = jax.random.uniform(ks[4], (B, T, H))
    S0 = jax.random.normal(ks[5], (B, H, DK, DV))
    theta = _random_theta(7) if point is None else parametric.parametric_point(point, H)
    valid = jnp.arange(T) < 30
    rule = rules.get_rule("parametric")
    o1, s1 = rules.scan_rule(rule, theta, S0, q, k, v, alpha, beta, valid)
    o2, s2 = rules.apply_rule(
        rule, theta, S0, q, k, v, alpha, beta, valid, impl="chunked", chunk_size=C
    )
    scale = float(jnp.abs(s1).max())
    chex.assert_trees_all_close(o2[:, :30], o1[:, :30], atol=2e-5 * scale, rtol=1e-5)
    chex.assert_trees_all_close(s2, s1, atol=2e-5 * scale, rtol=1e-5)
    if point is None:  # gradients w.r.t. theta and the inputs agree too

        def loss(impl, theta, k, v):
            o, s = rules.apply_rule(rule, theta, S0, q, k, v, alpha, beta, valid, impl=impl)
            return jnp.sum(jnp.sin(o[:, :30])) + jnp.sum(jnp.cos(s))

        grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
        g_scan, g_chunk = grad("scan", theta, k, v), grad("chunked", theta, k, v)
        chex.assert_trees_all_close(g_chunk, g_scan, atol=1e-3 * scale, rtol=1e-4)


def test_describe_theta_and_points():
    theta = parametric.parametric_point("gated_delta", 2)
    theta = {**theta, "decay": jnp.asarray([0.9, 0.1])}
    d = parametric.describe_theta(theta)
    assert [h["nearest"] for h in d["heads"]] == ["gated_delta", "delta"]
    assert d["coefficients"]["decay"] == pytest.approx([0.9, 0.1])
    assert d["heads"][0]["distance"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="known points"):
        parametric.parametric_point("oja", 2)
    with pytest.raises(ValueError, match="theta lacks"):
        parametric.describe_theta({"decay": jnp.zeros(2)})
