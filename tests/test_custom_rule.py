"""The example of a new rule (examples/custom_rule.py) registers, builds and trains."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sleep_consolidation as sc
from sleep_consolidation.tasks import make_task

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # examples/ is not an installed package
    sys.path.insert(0, ROOT)

import examples.custom_rule  # noqa: E402, F401  (registers "oja")


@pytest.mark.slow  # out of the default run (kept under 5 min); CI runs -m slow
def test_custom_rule_trains_through_sleep():
    assert "oja" in sc.available_rules()
    task = make_task(
        "recall", num_pairs_values=(2,), num_keys=4, num_values=4, window=4, num_queries=2
    )
    cfg = sc.ModelConfig(
        vocab_size=task.vocab_size, d_model=16, num_heads=2, layout=("attn", "ssm"), rule="oja"
    )
    params = sc.init_params(cfg, jax.random.key(0))
    np.testing.assert_allclose(params.blocks[1]["mixer"]["theta"]["lr"], 0.5)
    tx = optax.adam(1e-2)

    def loss_fn(p, batch):
        logits = sc.forward(p, batch.tokens, window=task.window, passes=2)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets)
        return jnp.sum(nll * batch.loss_mask) / jnp.sum(batch.loss_mask)

    @jax.jit
    def step(p, opt, batch):
        loss, g = jax.value_and_grad(loss_fn)(p, batch)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt, loss, g

    opt = tx.init(params)
    losses = []
    for i in range(30):
        params, opt, loss, g = step(params, opt, task.batch(0, i, 32))
        losses.append(float(loss))
        if i == 0:
            g_lr = np.asarray(g.blocks[1]["mixer"]["theta"]["lr"])
            assert np.all(np.isfinite(g_lr)) and np.all(np.abs(g_lr) > 0), g_lr
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses


def test_a_custom_rules_theta_is_logged_like_the_parametric_rules():
    from conftest import init

    from sleep_consolidation.rules import parametric
    from sleep_consolidation.training import run_log

    assert run_log.has_theta("oja") and run_log.has_theta(parametric.NAME)
    assert not run_log.has_theta("gated_delta")
    cfg = sc.ModelConfig(vocab_size=5, d_model=8, num_heads=2, layout=("attn", "ssm"), rule="oja")
    record = run_log.theta_record(init(cfg), step=7)
    assert record == {"step": 7, "layers": [{"block": 1, "theta": {"lr": [0.5, 0.5]}}]}
