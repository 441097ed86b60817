"""Local rules: invariants, registry, reference scan."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sleep_consolidation as sc
from sleep_consolidation import rules

H, DK, DV = 2, 4, 3


def _inputs(seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    S = jax.random.normal(ks[0], (H, DK, DV))
    k = jax.random.normal(ks[1], (H, DK))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(ks[2], (H, DV))
    alpha = jax.random.uniform(ks[3], (H,), minval=0.5, maxval=1.0)
    beta = jax.random.uniform(ks[4], (H,))
    return S, k, v, alpha, beta


@pytest.mark.parametrize("name", ["gated_delta", "gated_hebbian"])
def test_zero_beta_only_decays(name):
    S, k, v, alpha, _ = _inputs()
    out = rules.get_rule(name).update(S, k, v, alpha, jnp.zeros(H), None)
    chex.assert_trees_all_close(out, alpha[:, None, None] * S, atol=1e-6)


def test_delta_zero_beta_is_identity():
    S, k, v, alpha, _ = _inputs()
    chex.assert_trees_all_close(rules.delta(S, k, v, alpha, jnp.zeros(H)), S, atol=1e-6)


@pytest.mark.parametrize("name", ["delta", "gated_delta"])
def test_delta_beta_one_stores_value_exactly(name):
    S, k, v, alpha, _ = _inputs(1)
    out = rules.get_rule(name).update(S, k, v, alpha, jnp.ones(H), None)
    chex.assert_trees_all_close(jnp.einsum("hkv,hk->hv", out, k), v, atol=1e-5)


def test_hebbian_matches_causal_linear_attention():
    B, T = 2, 9
    ks = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(ks[0], (B, T, H, DK))
    k = jax.random.normal(ks[1], (B, T, H, DK))
    v = jax.random.normal(ks[2], (B, T, H, DV))
    gates = jnp.full((B, T, H), 0.3)  # ignored by hebbian
    o, S_T = rules.scan_rule(
        rules.get_rule("hebbian"), None, jnp.zeros((B, H, DK, DV)), q, k, v, gates, gates
    )
    scores = jnp.einsum("bthd,bshd->bhts", q, k) * jnp.tril(jnp.ones((T, T)))
    chex.assert_trees_all_close(o, jnp.einsum("bhts,bshd->bthd", scores, v), atol=1e-5)
    chex.assert_trees_all_close(S_T, jnp.einsum("bthk,bthv->bhkv", k, v), atol=1e-5)


def test_scan_valid_mask_freezes_state():
    B, T = 1, 6
    ks = jax.random.split(jax.random.key(4), 3)
    q = jax.random.normal(ks[0], (B, T, H, DK))
    k = jax.random.normal(ks[1], (B, T, H, DK))
    v = jax.random.normal(ks[2], (B, T, H, DV))
    g = jnp.full((B, T, H), 0.7)
    rule = rules.get_rule("gated_delta")
    S0 = jnp.zeros((B, H, DK, DV))
    valid = jnp.arange(T) < 4
    _, S_masked = rules.scan_rule(rule, None, S0, q, k, v, g, g, valid)
    _, S_first4 = rules.scan_rule(rule, None, S0, q[:, :4], k[:, :4], v[:, :4], g[:, :4], g[:, :4])
    chex.assert_trees_all_close(S_masked, S_first4, atol=1e-6)


def test_unknown_rule_lists_known():
    with pytest.raises(ValueError, match="known rules: .*gated_delta"):
        rules.get_rule("nope")
    with pytest.raises(ValueError, match="unknown rule"):
        sc.ModelConfig(vocab_size=4, d_model=8, num_heads=2, rule="nope")


def test_register_rule_checks():
    with pytest.raises(ValueError, match="already registered"):
        sc.register_rule("delta", rules.delta)
    with pytest.raises(ValueError, match="callable"):
        sc.register_rule("bad_rule", 3)
    assert set(sc.available_rules()) >= {"gated_delta", "delta", "gated_hebbian", "hebbian"}


def test_rule_step_matches_scan_single_token():
    B = 2
    ks = jax.random.split(jax.random.key(5), 4)
    S0 = jax.random.normal(ks[0], (B, H, DK, DV))
    q, k = (jax.random.normal(kk, (B, 1, H, DK)) for kk in ks[1:3])
    v = jax.random.normal(ks[3], (B, 1, H, DV))
    g = jnp.full((B, 1, H), 0.6)
    rule = rules.get_rule("gated_delta")
    o, S = rules.scan_rule(rule, None, S0, q, k, v, g, g)
    S2, o2 = rules.rule_step(rule, None, S0, q[:, 0], k[:, 0], v[:, 0], g[:, 0], g[:, 0])
    np.testing.assert_allclose(o[:, 0], o2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(S, S2, rtol=1e-5, atol=1e-6)
