"""Semantics of sleep and eviction, gradients, user rules, jit behaviour and bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import stream_loop, tiny_config

import sleep_consolidation as sc

L = 4


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_design_contract_snippet_runs_as_written():
    B, L_, N = 2, 4, 3
    cfg = sc.ModelConfig(
        vocab_size=16,
        d_model=64,
        num_heads=2,
        layout=("attn", "ssm", "attn", "ssm"),
        rule="gated_delta",
    )
    params = sc.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (B, 10), 0, 16)
    logits = sc.forward(params, tokens, window=L_, passes=N)
    assert logits.shape == (B, 10, 16) and logits.dtype == jnp.float32
    state = sc.init_state(cfg, batch_size=B, window=L_)
    for t in range(tokens.shape[1]):
        state, logits_t = sc.wake_step(params, state, tokens[:, t])
        chex.assert_trees_all_close(logits_t, logits[:, t], atol=2e-5, rtol=2e-5)
        if sc.window_full(state):
            for _ in range(N - 1):
                state = sc.sleep_step(params, state)
            state = sc.evict(state)
    assert sorted(state.fast) == [1, 3]  # keyed by ssm block index
    chex.assert_shape(list(state.fast.values()), ((B, 2, 32, 32),) * 2)
    assert all(s.dtype == jnp.float32 for s in state.fast.values())
    assert state.pos.shape == () and sc.window_full(state).shape == ()


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_one_pass_is_the_vanilla_hybrid(tokens):
    """N=1 = one pass per window with fast weights carried: no sleep_step is ever called."""
    params = sc.init_params(tiny_config(), jax.random.key(0))
    state = sc.init_state(params.config, batch_size=2, window=L)
    outs = []
    for t in range(tokens.shape[1]):
        state, lt = sc.wake_step(params, state, tokens[:, t])
        outs.append(lt)
        if sc.window_full(state):
            state = sc.evict(state)
    chex.assert_trees_all_close(
        jnp.stack(outs, 1), sc.forward(params, tokens, window=L, passes=1), atol=2e-5, rtol=2e-5
    )


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_sleep_changes_logits_only_after_the_first_window(tokens):
    params = sc.init_params(tiny_config(), jax.random.key(0))
    one = sc.forward(params, tokens, window=L, passes=1)
    two = sc.forward(params, tokens, window=L, passes=2)
    chex.assert_trees_all_close(one[:, :L], two[:, :L], atol=1e-6)
    assert float(jnp.max(jnp.abs(one[:, L:] - two[:, L:]))) > 1e-4


def _perturb_first_window(tokens):
    return tokens.at[:, :L].set((tokens[:, :L] + 3) % 11)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_hard_eviction_attention_only_forgets(tokens):
    params = sc.init_params(tiny_config(layout=("attn", "attn")), jax.random.key(0))
    a = sc.forward(params, tokens, window=L, passes=2)
    b = sc.forward(params, _perturb_first_window(tokens), window=L, passes=2)
    chex.assert_trees_all_close(a[:, L:], b[:, L:], atol=1e-6)
    assert float(jnp.max(jnp.abs(a[:, :L] - b[:, :L]))) > 1e-4


def test_memory_crosses_the_boundary_only_through_fast_weights(tokens):
    params = sc.init_params(tiny_config(), jax.random.key(0))
    a = sc.forward(params, tokens, window=L, passes=2)
    b = sc.forward(params, _perturb_first_window(tokens), window=L, passes=2)
    assert float(jnp.max(jnp.abs(a[:, L:] - b[:, L:]))) > 1e-4, "fast weights should carry memory"
    za, _ = stream_loop(params, tokens, L, 2, zero_fast_at_boundary=True)
    zb, _ = stream_loop(params, _perturb_first_window(tokens), L, 2, zero_fast_at_boundary=True)
    chex.assert_trees_all_close(za[:, L:], zb[:, L:], atol=1e-6)


def test_sliding_eviction_keeps_recent_context(tokens):
    # one attention layer: with more, the receptive field grows by L-1 per layer, as in any SWA
    params = sc.init_params(tiny_config(layout=("attn",)), jax.random.key(0))
    a = sc.forward(params, tokens, window=L, passes=1, eviction="sliding")
    b = sc.forward(params, _perturb_first_window(tokens), window=L, passes=1, eviction="sliding")
    # position L sees the previous L-1 tokens; position 2L-1 sees only the second window
    assert float(jnp.max(jnp.abs(a[:, L] - b[:, L]))) > 1e-4
    chex.assert_trees_all_close(a[:, 2 * L - 1], b[:, 2 * L - 1], atol=1e-6)


def _last_window_loss(params, tokens, passes, **kw):
    logits = sc.forward(params, tokens, window=L, passes=passes, **kw)
    logp = jax.nn.log_softmax(logits[:, -3:])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, -3:, None], -1))


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_gradients_flow_through_sleep(tokens):
    params = sc.init_params(tiny_config(layout=("attn", "ssm")), jax.random.key(0))
    gate_names = ("wa", "wb", "a_log", "dt_bias")
    grads = {}
    for n in (1, 3):
        g = jax.grad(_last_window_loss)(params, tokens, n)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(g))
        grads[n] = [g.blocks[1]["mixer"][name] for name in gate_names]
    diffs = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(grads[1], grads[3])]
    assert max(diffs) > 1e-6


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_truncated_gradients_differ_and_stay_finite(tokens):
    params = sc.init_params(tiny_config(layout=("attn", "ssm")), jax.random.key(0))
    full = jax.grad(_last_window_loss)(params, tokens, 4)
    trunc = jax.grad(_last_window_loss)(params, tokens, 4, grad_passes=1)
    # Truncation changes the gradient only: the logits at every position (the consolidated
    # windows' too, not just the last window's that the loss reads) are the same.
    fwd = jax.jit(sc.forward, static_argnames=("window", "passes", "grad_passes"))
    same_forward = fwd(params, tokens, window=L, passes=4, grad_passes=1)
    want = fwd(params, tokens, window=L, passes=4)
    np.testing.assert_allclose(same_forward, want, rtol=1e-5, atol=1e-6)  # 1.3 off before the fix
    leaves_f, leaves_t = jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(trunc)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves_t)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(leaves_f, leaves_t)) > 1e-7


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
@pytest.mark.parametrize("remat", ["pass", "window", "window+pass"])
def test_remat_gives_same_gradients(tokens, remat):
    params = sc.init_params(tiny_config(layout=("attn", "ssm")), jax.random.key(0))
    g0 = jax.grad(_last_window_loss)(params, tokens, 3)
    g1 = jax.grad(_last_window_loss)(params, tokens, 3, remat=remat)
    chex.assert_trees_all_close(g0, g1, atol=1e-6, rtol=1e-5)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_user_rule_with_theta_trains(tokens):
    def scaled_hebbian(S, k, v, alpha, beta, theta):
        return (
            alpha[:, None, None] * S + theta["gain"][:, None, None] * k[:, :, None] * v[:, None, :]
        )

    def init(key, num_heads, d_k, d_v):
        return {"gain": jnp.full((num_heads,), 0.5)}

    sc.register_rule("test_scaled_hebbian", scaled_hebbian, init, overwrite=True)
    params = sc.init_params(tiny_config("test_scaled_hebbian"), jax.random.key(0))
    assert params.blocks[1]["mixer"]["theta"]["gain"].shape == (2,)
    streamed, _ = stream_loop(params, tokens, L, 2)
    chex.assert_trees_all_close(
        streamed, sc.forward(params, tokens, window=L, passes=2), atol=2e-5, rtol=2e-5
    )
    g = jax.grad(_last_window_loss)(params, tokens, 2)
    assert float(jnp.max(jnp.abs(g.blocks[1]["mixer"]["theta"]["gain"]))) > 0


def test_jit_does_not_retrace(tokens):
    params = sc.init_params(tiny_config(), jax.random.key(0))
    traces = []

    @jax.jit
    def f(p, t):
        traces.append(1)
        return sc.forward(p, t, window=L, passes=2)

    f(params, tokens)
    f(params, tokens + 0)
    wake_traces = []

    @jax.jit  # a fresh wrapper: jit caches are shared between jit(f) objects of the same f
    def wake(p, s, t):
        wake_traces.append(1)
        return sc.wake_step(p, s, t)

    state = sc.init_state(params.config, batch_size=2, window=L)
    state, _ = wake(params, state, tokens[:, 0])
    state, _ = wake(params, state, tokens[:, 1])
    assert len(traces) == 1 and len(wake_traces) == 1


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(rule="nope"), "rule"),
        (dict(layout=("attn", "mlp")), "block kind"),
        (dict(layout=()), "layout"),
        (dict(d_model=10, num_heads=3), "d_model"),
        (dict(impl="fast"), "impl"),
        (dict(num_heads=0), "num_heads"),
    ],
)
def test_bad_config(kwargs, field):
    base = dict(vocab_size=11, d_model=16, num_heads=2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=field):
        sc.ModelConfig(**base)


def test_bad_schedule_and_tokens(tokens):
    params = sc.init_params(tiny_config(), jax.random.key(0))
    with pytest.raises(ValueError, match="window"):
        sc.forward(params, tokens, window=0)
    with pytest.raises(ValueError, match="passes"):
        sc.forward(params, tokens, window=L, passes=0)
    with pytest.raises(ValueError, match="loop_blocks"):
        sc.forward(params, tokens, window=L, loop_blocks=(2, 9))
    with pytest.raises(ValueError, match="eviction"):
        sc.init_state(params.config, batch_size=2, window=L, eviction="soft")
    with pytest.raises(ValueError, match="rank 2"):
        sc.forward(params, tokens[0], window=L)
    with pytest.raises(ValueError, match="integer"):
        sc.forward(params, tokens.astype(jnp.float32), window=L)
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        sc.forward(params, tokens.at[0, 0].set(11), window=L)
    state = sc.init_state(params.config, batch_size=2, window=1)
    state, _ = sc.wake_step(params, state, tokens[:, 0])
    with pytest.raises(ValueError, match="full window"):
        sc.wake_step(params, state, tokens[:, 1])


def test_out_of_range_ids_inside_jit_give_nan(tokens):
    params = sc.init_params(tiny_config(), jax.random.key(0))
    out = jax.jit(sc.forward, static_argnames=("window",))(
        params, tokens.at[0, 0].set(99), window=L
    )
    assert bool(jnp.isnan(out[0, 0]).all())
