"""The fast train step against its reference (BUILD_NOTES.md, "Research-scale throughput").

The fast path = unrolled short loops (`loops.scan`), the chunked rule, logits only at the
task's answer positions, fused input projections, and gradient accumulation over
micro-batches. The reference = `lax.scan` everywhere (no unrolling), the per-token rule,
logits at every position, one batch. They must agree in loss and gradients (float
tolerance: the sums are reordered), for every built-in rule and every N in {1, 2, 3}
(a covering set of pairs). Its pieces
have their own tests too: test_loops.py, test_linear.py, test_chunked.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sleep_consolidation as sc
from sleep_consolidation.layers import fast_weights, loops
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


# One point by default (the step's speed-ups are rule-independent); under -m slow, every
# rule and every N, not every pair (each pair cost ~30 s of CI; each rule's chunked form
# is checked against its scan for itself in test_chunked.py): a delta rule at N = 2 and 3,
# so that the fast step's consolidation is compared across more than one sleep pass.
_DEFAULT = {("delta", 1)}
_SLOW = {("gated_delta", 2), ("gated_delta", 3), ("gated_hebbian", 3), ("hebbian", 2)}
_GRID = [
    pytest.param(r, n, marks=() if (r, n) in _DEFAULT else pytest.mark.slow)
    for r in RULES
    for n in (1, 2, 3)
    if (r, n) in _DEFAULT | _SLOW
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


# Positions asked for: in the last window only (its last block at those positions only);
# in both (early ones gathered, then the last window's); unsorted, and early only (the
# last window whole, then gathered).
ALL_POSITIONS = ((12, 13, 15), (0, 5, 6, 7, 12, 15), (15, 3), (2, 4))
MIXED = ((0, 5, 6, 7, 12, 15),)  # by default (one compile per tuple); the rest -m slow


@pytest.mark.parametrize(
    "passes, loop_blocks, remat, positions",
    [
        pytest.param(2, (0, 2), "none", MIXED, marks=pytest.mark.slow),  # block after the loop
        # (the looped-range case is the fast step's own, tested against the reference above)
        pytest.param(2, (0, 2), "none", ALL_POSITIONS[:1] + ALL_POSITIONS[2:],
                     marks=pytest.mark.slow),
        pytest.param(1, None, "none", ALL_POSITIONS, marks=pytest.mark.slow),
        pytest.param(2, None, "none", ALL_POSITIONS, marks=pytest.mark.slow),
        pytest.param(2, (1, 3), "window", ALL_POSITIONS, marks=pytest.mark.slow),
    ],
)  # fmt: skip
def test_last_block_at_positions_only_equals_the_full_logits(passes, loop_blocks, remat, positions):
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
    for pos in positions:
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
