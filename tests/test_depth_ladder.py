"""The Rule 110 depth ladder's measurements: per-query accuracy, the constant-answer floor
and the ladder config (results/RESULTS.md, "Depth")."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import sleep_consolidation as sc
from sleep_consolidation.tasks import make_task
from sleep_consolidation.training import evaluation


def test_per_query_accuracy_is_the_token_accuracy_at_each_query():
    task = make_task("rule110", num_states=4, width=8, t_values=(2,))
    cfg = sc.ModelConfig(
        vocab_size=task.vocab_size, d_model=16, num_heads=2, layout=("attn", "ssm")
    )
    params = sc.init_params(cfg, jax.random.key(3))
    batch = task.eval_batch(0, 40)
    got = evaluation.evaluate(params, task, batch, window=8, passes=2, batch_size=16)
    logits = sc.forward(params, batch.tokens, 8, 2)
    pred = np.asarray(jax.numpy.argmax(logits, -1))
    for i, p in enumerate(task.answer_positions):
        want = np.mean(pred[:, p] == np.asarray(batch.targets)[:, p])
        np.testing.assert_allclose(got[f"acc/Q{i + 1}"], want, rtol=1e-6, err_msg=f"Q{i + 1}")
    # Exact match needs every query right: never above the worst query.
    assert got["acc"] <= min(got[f"acc/Q{i}"] for i in range(1, 5)) + 1e-9
    # A task without named answer positions reports no per-position keys.
    recall = make_task("recall", num_pairs_values=(2,), num_keys=8, num_values=8, window=4,
                       num_queries=2)  # fmt: skip
    rcfg = sc.ModelConfig(vocab_size=recall.vocab_size, d_model=16, num_heads=2, layout=("attn",))
    keys = evaluation.evaluate(sc.init_params(rcfg, jax.random.key(0)), recall,
                               recall.eval_batch(0, 8), passes=1)  # fmt: skip
    assert not any(k.startswith("acc/Q") for k in keys)


def test_constant_answer_accuracy_is_the_majority_answer():
    task = make_task("rule110", num_states=2, width=8, t_values=(0, 3))
    batch = task.eval_batch(0, 512)
    got = evaluation.constant_answer_accuracy(task, batch)
    targets = np.asarray(batch.targets)[:, list(task.answer_positions)]
    depth = np.asarray(batch.depth)[:, task.answer_positions[0]]
    majority = np.array([np.bincount(targets[:, j]).argmax() for j in range(targets.shape[1])])
    ok = (targets == majority).all(axis=1)
    assert got["acc"] == pytest.approx(ok.mean())
    assert got["acc/d=3"] == pytest.approx(ok[depth == 3].mean())
    # At t = 0 a bit is a fair coin: two bits right by a constant guess ~ 1/4.
    assert got["acc/d=0"] == pytest.approx(0.25, abs=0.06)


def test_depth_config_is_the_ladder_model():
    from experiments.configs import rule110
    from sleep_consolidation.training import run_config

    c = rule110.get_config("depth")
    c.task.t_values = (6,)
    spec = run_config.resolve_config(c)
    assert spec.task.width == 16 and spec.task.num_states == 4 and spec.task.depths == (6,)
    assert spec.model_config.layout == ("attn", "ssm", "attn", "ssm")
    with pytest.raises(ValueError, match=r"':tiny', ':cpu', ':depth'"):
        rule110.get_config("deep")
