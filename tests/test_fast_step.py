"""The fast train step against its reference (BUILD_NOTES.md, "Research-scale throughput").

The fast path = unrolled short loops (`loops.scan`), the chunked rule, logits only at the
task's answer positions, fused input projections, and gradient accumulation over
micro-batches. The reference = `lax.scan` everywhere (no unrolling), the per-token rule,
logits at every position, one batch. They must agree in loss and gradients (float
tolerance: the sums are reordered), for every built-in rule and N in {1, 2, 3}.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sleep_consolidation as sc
from sleep_consolidation.layers import fast_weights, linear, loops
from sleep_consolidation.tasks import make_task
from sleep_consolidation.training import train_step

RULES = ("gated_delta", "delta", "gated_hebbian", "hebbian")
TASK = make_task("recall", num_pairs_values=(2, 4), num_keys=8, num_values=8, window=8,
                 num_queries=4)  # fmt: skip


def _params(rule, impl, seed=0):
    cfg = sc.ModelConfig(
        vocab_size=TASK.vocab_size, d_model=16, num_heads=2, layout=("attn", "ssm"),
        rule=rule, impl=impl, chunk_size=4, mlp_ratio=2,
    )  # fmt: skip
    return sc.init_params(cfg, jax.random.key(seed))


def _loss_and_grad(params, batch, passes, positions, microbatches):
    tx = optax.sgd(1.0)  # the update is -grad: the new params carry the gradient exactly
    step = train_step.make_train_step(
        tx, window=TASK.default_window, passes=passes, reinject_embedding=True,
        loss_positions=positions, microbatches=microbatches,
    )  # fmt: skip
    state = train_step.init_train_state(params, tx)
    new, metrics = step(state, batch)
    grads = jax.tree.map(lambda a, b: a - b, state.params, new.params)
    return float(metrics["loss"]), grads, float(metrics["token_acc"])


# One point by default (the step's speed-ups are rule-independent); the grid under -m slow.
_DEFAULT = {("delta", 1)}
_GRID = [
    pytest.param(r, n, marks=() if (r, n) in _DEFAULT else pytest.mark.slow)
    for r in RULES
    for n in (1, 2, 3)
]


@pytest.mark.parametrize("rule, passes", _GRID)
def test_fast_step_equals_reference(rule, passes):
    batch = TASK.batch(0, 0, 8)
    fast = _loss_and_grad(_params(rule, "chunked"), batch, passes, TASK.answer_positions, 4)
    with loops.unroll_limit(0):  # every loop a lax.scan
        ref = _loss_and_grad(_params(rule, "scan"), batch, passes, None, 1)
    np.testing.assert_allclose(fast[0], ref[0], rtol=1e-5)
    assert fast[2] == ref[2]
    for g_fast, g_ref in zip(jax.tree.leaves(fast[1]), jax.tree.leaves(ref[1]), strict=True):
        np.testing.assert_allclose(g_fast, g_ref, rtol=2e-4, atol=2e-6)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_microbatches_give_the_same_parameters_over_steps():
    """Two AdamW steps with M=4 micro-batches vs one batch (uneven answer counts: the
    weighting by answers is what makes them equal)."""
    params = _params("gated_delta", "chunked")
    tx = optax.adamw(1e-2)
    out = []
    for m in (1, 4):
        step = train_step.make_train_step(tx, window=TASK.default_window, passes=2, microbatches=m)
        state = train_step.init_train_state(params, tx)
        for i in range(2):
            b = TASK.batch(0, i, 8)
            mask = np.asarray(b.loss_mask).copy()
            mask[1::4, -2:] = 0.0  # micro-batch 1 has fewer answers than the others
            state, _ = step(state, b.replace(loss_mask=mask))
        out.append(state.params)
    for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_microbatches_must_divide_the_batch():
    step = train_step.make_train_step(optax.sgd(1.0), window=8, microbatches=3)
    params = _params("delta", "chunked")
    with pytest.raises(ValueError, match="not divisible"):
        step(train_step.init_train_state(params, optax.sgd(1.0)), TASK.batch(0, 0, 8))
    with pytest.raises(ValueError, match="microbatches"):
        train_step.make_train_step(optax.sgd(1.0), window=8, microbatches=0)


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


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_forward_positions_equal_the_full_logits():
    params = _params("gated_delta", "chunked")
    tokens = jnp.asarray(TASK.batch(0, 0, 2).tokens)
    full = sc.forward(params, tokens, window=8, passes=2)
    pos = (0, 5, 6, 7, 12, 15)  # several runs
    got = sc.forward(params, tokens, window=8, passes=2, positions=pos)
    np.testing.assert_allclose(got, full[:, list(pos)], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="positions"):
        sc.forward(params, tokens, window=8, passes=2, positions=(16,))


@pytest.mark.parametrize(
    "passes, loop_blocks, remat",
    [
        (2, (0, 2), "none"),  # the last block after the looped range
        # (the looped-range case is the fast step's own, tested against the reference above)
        pytest.param(1, None, "none", marks=pytest.mark.slow),
        pytest.param(2, None, "none", marks=pytest.mark.slow),
        pytest.param(2, (1, 3), "window", marks=pytest.mark.slow),
    ],
)
def test_last_block_at_positions_only_equals_the_full_logits(passes, loop_blocks, remat):
    """The last window's last block runs its residual and MLP at the asked positions only
    (where no sleep pass reads its output): logits and gradients as from the full pass."""
    cfg = sc.ModelConfig(
        vocab_size=TASK.vocab_size, d_model=16, num_heads=2, layout=("ssm", "attn", "ssm"),
        rule="gated_delta", chunk_size=4, mlp_ratio=2,
    )  # fmt: skip
    params = sc.init_params(cfg, jax.random.key(2))
    tokens = jnp.asarray(TASK.batch(0, 0, 2).tokens)
    kw = dict(window=8, passes=passes, loop_blocks=loop_blocks, remat=remat)
    fwd = jax.jit(lambda p, pos: sc.forward(p, tokens, positions=pos, **kw), static_argnums=1)
    full = fwd(params, None)
    for pos in ((12, 13, 15), (0, 5, 6, 7, 12, 15), (15, 3), (2, 4)):
        np.testing.assert_allclose(fwd(params, pos), full[:, list(pos)], rtol=1e-5, atol=1e-5)
    pos = (3, 9, 10, 14)
    grad = lambda f: jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(f(p)))))(params)
    want = grad(lambda p: sc.forward(p, tokens, **kw)[:, list(pos)])
    got = grad(lambda p: sc.forward(p, tokens, positions=pos, **kw))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)


def test_fused_projection_equals_separate_matmuls():
    params = _params("gated_delta", "chunked")
    p = params.blocks[1]["mixer"]
    x = jax.random.normal(jax.random.key(3), (2, 5, 16))
    u, z_g, z_a, z_b = fast_weights._project(p, x)
    want_u = jnp.concatenate([x @ p["wq"], x @ p["wk"], x @ p["wv"]], -1)
    for got, want in ((u, want_u), (z_g, x @ p["wg"]), (z_a, x @ p["wa"]), (z_b, x @ p["wb"])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize(
    "name, knobs",
    [
        ("recall", {}),
        ("recall", {"num_pairs_values": (4, 8, 16), "window": 32}),
        ("rule110", {}),
        ("depo", {}),
        ("gsm", {}),
    ],
)
def test_answer_positions_cover_every_supervised_position(name, knobs):
    task = make_task(name, **knobs)
    for step in range(5):  # Task.batch itself raises if a batch supervises elsewhere
        mask = np.asarray(task.batch(step, step, 64).loss_mask)
        hit = np.flatnonzero(mask.any(0))
        assert set(hit) <= set(task.answer_positions)


def test_a_batch_outside_its_answer_positions_is_refused(monkeypatch):
    task = make_task("rule110")
    monkeypatch.setattr(type(task), "answer_positions", property(lambda self: (99,)))
    with pytest.raises(ValueError, match="answer_positions"):
        task.batch(0, 0, 4)


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
