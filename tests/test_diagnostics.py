"""Consolidation diagnostics: the window loop equals forward, the statistics are what they
claim, and `memory_conditions` catches a planted failure (and passes a healthy model)."""

import dataclasses
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import stream_loop, tiny_config

import sleep_consolidation as sc
from experiments import plots
from sleep_consolidation import model, rules, sequence
from sleep_consolidation.analysis import diagnostics
from sleep_consolidation.layers import fast_weights, norms
from sleep_consolidation.tasks import make_task

LAYOUT = ("attn", "ssm", "ssm")  # two ssm layers, one attention block: cheap to compile


@pytest.fixture(scope="module")
def params():
    return sc.init_params(tiny_config(layout=LAYOUT), jax.random.key(0))


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
@pytest.mark.parametrize(
    "T, passes, schedule",
    [
        (11, 3, {}),
        (
            12,
            3,
            dict(
                eviction="sliding",
                reinject_embedding=True,
                reset_between_passes=True,
                loop_blocks=(1, 2),
            ),
        ),
    ],
)
def test_window_loop_without_hook_equals_forward(params, T, passes, schedule):
    tokens = jax.random.randint(jax.random.key(T), (2, T), 0, 11)
    want = jax.jit(sc.forward, static_argnums=(2, 3), static_argnames=tuple(schedule))(
        params, tokens, 4, passes, **schedule
    )
    got, stats, _ = diagnostics.window_loop(params, tokens, 4, passes, **schedule)
    assert stats is None
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)


def test_recording_window_step_changes_nothing_and_records_every_pass(params):
    """The diagnostics' view of `sequence.window_step` (record=True): the same carry and h
    to the bit, S after every pass (the last is the carried memory), each ssm block's input."""
    cfg = params.config
    toks = jax.random.randint(jax.random.key(3), (2, 4), 0, 11)
    sched = sc.Schedule(loop_blocks=(0, 2))  # ssm block 1 sleeps, block 2 is a coda
    carry = sequence.init_carry(cfg, 2, 4, sched)

    def step(record):
        kw = dict(sched=sched, window=4, passes=3, sleep=True, grad_passes=1, record=record)
        return jax.jit(lambda p, c, t: sequence.window_step(p, c, t, **kw))(params, carry, toks)

    plain, (c, h, aux) = step(False), step(True)
    chex.assert_trees_all_equal((c, h), plain)
    for b in cfg.ssm_blocks:
        chex.assert_shape(aux["fast"][b], (3, 2, cfg.num_heads, cfg.dh, cfg.dh))
        chex.assert_trees_all_equal(aux["fast"][b][-1], c.fast[b])
        chex.assert_shape(aux["inputs"][b], (2, 4, cfg.d_model))
    looped, coda = np.asarray(aux["fast"][1]), np.asarray(aux["fast"][2])
    assert (np.abs(looped[1:] - looped[:-1]).max(axis=(1, 2, 3, 4)) > 1e-6).all()  # each pass
    assert (coda == coda[:1]).all()  # outside the loop: written once, at wake


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_statistics_finite_and_streaming_agrees(params, tmp_path):
    tokens = jax.random.randint(jax.random.key(1), (2, 11), 0, 11)
    change = diagnostics.fast_weight_change_per_pass(params, tokens, window=4, passes=3)
    recall = diagnostics.recall_of_evicted_window(params, tokens, window=4, passes=3)
    chex.assert_shape(change, (2, 2, 2))
    chex.assert_shape([recall["cosine"], recall["rel_error"]], [(2, 3, 2)] * 2)
    chex.assert_shape(recall["cosine_at_window_start"], (2, 2))
    for x in (change, *recall.values()):
        assert np.all(np.isfinite(x))
    assert np.all(np.asarray(change) > 0)
    assert np.all(np.abs(recall["cosine"]) <= 1 + 1e-5)
    np.testing.assert_array_equal(recall["cosine_at_window_start"][0], 0.0)  # S starts at 0
    # The window loop's per-pass change equals the one measured by streaming.
    chex.assert_trees_all_close(recall["change"], change, atol=1e-5, rtol=1e-4)
    path = str(tmp_path / "c.png")
    fig = plots.plot_consolidation({**recall, "change": change}, path)
    assert len(fig.axes) == 2
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_recall_reads_exactly_what_the_block_wrote():
    """Hebbian fast weights from zero after one window are sum_t k_t v_t^T with the keys and
    values `block_keys_values` recomputes; with one-token windows and the memory zeroed at
    every boundary, S = k v^T reads v back exactly (cosine 1) with the window's own key."""
    p = sc.init_params(tiny_config(rule="hebbian", layout=("attn", "ssm")), jax.random.key(2))
    cfg = p.config
    tokens = jax.random.randint(jax.random.key(3), (2, 4), 0, 11)
    prefix = {0: (jnp.zeros((2, 0, 2, 8)), jnp.zeros((2, 0, 2, 8)), jnp.zeros((0,), bool))}
    h, _, _ = model.window_pass(p, range(0, 1), model.embed(p, tokens), {}, prefix)
    x = norms.rms_norm(h, p.blocks[1]["norm1"])
    _, S = fast_weights.fast_weight_window(p.blocks[1]["mixer"], cfg, x, jnp.zeros((2, 2, 8, 8)))
    k, v = diagnostics.block_keys_values(p.blocks[1]["mixer"], cfg, x)
    chex.assert_trees_all_close(S, jnp.einsum("bthk,bthv->bhkv", k, v), atol=1e-5)

    zero = diagnostics.zero_memory  # a boundary hook given as a function
    _, recall, _ = diagnostics.window_loop(p, tokens[:, :3], 1, 1, boundary=zero, stats=True)
    np.testing.assert_allclose(recall["cosine"], 1.0, atol=1e-5)
    np.testing.assert_allclose(recall["rel_error"], 0.0, atol=1e-4)


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_boundary_hooks_match_streaming(params):
    tokens = jax.random.randint(jax.random.key(4), (3, 9), 0, 11)
    want, _ = stream_loop(params, tokens, 4, 2, zero_fast_at_boundary=True)
    got, _, _ = diagnostics.window_loop(params, tokens, 4, 2, boundary="zero")
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-5)
    roll, _, _ = diagnostics.window_loop(params, tokens, 4, 2, boundary="roll")
    chex.assert_trees_all_close(roll[:, :4], got[:, :4], atol=1e-6)  # the first window
    assert not np.allclose(roll[:, 4:], got[:, 4:], atol=1e-4)
    with pytest.raises(ValueError, match="boundary"):
        diagnostics.window_loop(params, tokens, 4, 2, boundary="nope")


def _flipped(S, k, v, alpha, beta, theta):
    """The planted failure: gated delta storing -v. From S = 0 its fast weights are exactly
    the negation of gated_delta's, so a model trained with gated_delta reads a confidently
    wrong memory (the in-window writes are negated too, under every condition)."""
    return rules.gated_delta(S, k, -v, alpha, beta)


rules.register_rule("planted_flipped_memory", _flipped, overwrite=True)


@pytest.mark.slow  # heavy (subprocesses / training); CI runs it with -m slow
def test_memory_conditions_flags_a_planted_failure_and_passes_a_healthy_model():
    task = make_task(
        "recall", num_pairs_values=(1, 2), num_keys=4, num_values=4, window=4, num_queries=2
    )
    cfg = sc.ModelConfig(
        vocab_size=task.vocab_size, d_model=16, num_heads=2, layout=("attn", "ssm")
    )
    N = 2
    tx = optax.adam(1e-2)

    def loss_fn(p, batch):
        logits = sc.forward(p, batch.tokens, window=task.window, passes=N)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets)
        return jnp.sum(nll * batch.loss_mask) / jnp.sum(batch.loss_mask)

    @jax.jit
    def step(p, opt, batch):
        g = jax.grad(loss_fn)(p, batch)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt

    p = sc.init_params(cfg, jax.random.key(0))
    opt = tx.init(p)
    for i in range(60):
        p, opt = step(p, opt, task.batch(0, i, 64))
    ev = task.eval_batch(0, 256)

    healthy, flags = diagnostics.memory_conditions(p, ev, task.depths, task.window, N)
    assert set(healthy) == set(diagnostics.CONDITIONS)
    assert all(np.isfinite(v) for r in healthy.values() for v in r.values())
    assert flags == []
    # The trained model uses its memory: zeroing or swapping it costs accuracy.
    assert healthy["trained_N"]["acc"] > healthy["no_memory"]["acc"] + 0.2
    assert healthy["trained_N"]["acc"] > healthy["wrong_memory"]["acc"] + 0.2

    planted = p.replace(config=dataclasses.replace(cfg, rule="planted_flipped_memory"))
    bad, flags = diagnostics.memory_conditions(planted, ev, task.depths, task.window, N)
    assert all(np.isfinite(v) for r in bad.values() for v in r.values())
    assert any(f.startswith(diagnostics.FLAG) and "depth 1" in f for f in flags), (bad, flags)
    _, loss_flags = diagnostics.memory_conditions(
        planted, ev, task.depths, task.window, N, metric="loss"
    )
    assert loss_flags
