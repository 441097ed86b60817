"""The no-learning reference (sleep_consolidation/analysis/capacity.py) on hand-computable cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sleep_consolidation.analysis import capacity


def _orthonormal(key, n, d):
    q, _ = jnp.linalg.qr(jax.random.normal(key, (d, d)))
    return q[:, :n].T  # n orthonormal rows


def test_one_pass_over_orthonormal_keys_recalls_exactly():
    keys = _orthonormal(jax.random.key(0), 16, 16)
    values = jax.random.normal(jax.random.key(1), (16, 8))
    S = capacity.delta_rule_passes(keys, values, passes=1)
    np.testing.assert_allclose(keys @ S, values, atol=1e-5)  # S^T k_i = v_i
    out = capacity.delta_recall(keys, values, passes=1)
    np.testing.assert_allclose(out["cosine"], 1.0, atol=1e-6)
    assert bool(out["exact"].all()) and float(out["mean_rel_error"]) < 1e-5
    # More passes change nothing: every write finds its item already exact.
    np.testing.assert_allclose(capacity.delta_rule_passes(keys, values, 3), S, atol=1e-5)


def test_two_correlated_keys_by_hand():
    # k1 = e1, k2 = (e1 + e2)/sqrt(2), v1 = e1, v2 = e2, beta = 1. After one pass:
    # S = k1 v1^T + k2 (v2 - v1/sqrt(2))^T, so S^T k2 = v2 (the last write is exact) and
    # S^T k1 = v1 + (v2 - v1/sqrt(2))/sqrt(2) = v1/2 + v2/sqrt(2).
    r = 1 / math.sqrt(2)
    keys = jnp.array([[1.0, 0.0], [r, r]])
    values = jnp.eye(2)
    S = capacity.delta_rule_passes(keys, values, passes=1)
    np.testing.assert_allclose(keys[1] @ S, [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(keys[0] @ S, [0.5, r], atol=1e-6)
    out = capacity.delta_recall(keys, values, passes=1)
    np.testing.assert_allclose(out["cosine"][0], 0.5 / math.sqrt(0.25 + 0.5), rtol=1e-6)
    assert not bool(out["exact"][0])  # read out closer to v2 than to v1: wrong
    # Each further pass multiplies k1's error by cos^2(k1, k2) = 1/2 (Kaczmarz).
    err = [float(jnp.linalg.norm(keys[0] @ capacity.delta_rule_passes(keys, values, n)
                                 - values[0])) for n in (1, 2, 3)]  # fmt: skip
    np.testing.assert_allclose(err[1] / err[0], 0.5, rtol=1e-5)
    np.testing.assert_allclose(err[2] / err[1], 0.5, rtol=1e-5)
    assert bool(capacity.delta_recall(keys, values, passes=3)["exact"].all())


def test_correlated_keys_need_more_passes():
    # 12 keys in R^16 sharing one direction (pairwise cosine ~0.7): independent, but far
    # from orthogonal, so one pass leaves errors that further passes remove.
    base = jax.random.normal(jax.random.key(0), (16,))
    keys = base + 0.8 * jax.random.normal(jax.random.key(1), (12, 16))
    keys = keys / jnp.linalg.norm(keys, axis=-1, keepdims=True)
    values = capacity.random_unit_vectors(jax.random.key(2), 12, 16)
    curve = capacity.recall_by_passes(keys, values, max_passes=256)
    cos, acc = np.asarray(curve["mean_cosine"]), np.asarray(curve["accuracy"])
    assert cos[0] < 0.9 and acc[0] < 1.0
    assert cos[0] < cos[1] < cos[3] < cos[7]  # N = 1 < 2 < 4 < 8
    assert cos[-1] > 0.99 and acc[-1] == 1.0
    # The scan's curve equals separate runs.
    one = capacity.delta_recall(keys, values, passes=4)
    np.testing.assert_allclose(cos[3], one["mean_cosine"], rtol=1e-5)


def test_overload_cannot_be_stored_and_the_codebook_is_used():
    ref = capacity.random_reference(jax.random.key(0), n=32, d=16, max_passes=8)
    assert ref["accuracy"].shape == (8,)
    assert float(ref["mean_cosine"][-1]) < 0.95  # n = 2 d_k: no S recalls every item
    under = capacity.random_reference(jax.random.key(0), n=4, d=16, max_passes=8)
    assert float(under["accuracy"][-1]) == 1.0
    keys = _orthonormal(jax.random.key(3), 2, 4)
    book = jnp.eye(4)
    out = capacity.delta_recall(keys, book[jnp.array([2, 2])], 1, codebook=book,
                                value_ids=jnp.array([2, 2]))  # fmt: skip
    assert bool(out["exact"].all())
    with pytest.raises(ValueError, match="value_ids"):
        capacity.delta_recall(keys, book[:2], 1, codebook=book)
    u = capacity.random_unit_vectors(jax.random.key(4), 5, 7)
    np.testing.assert_allclose(jnp.linalg.norm(u, axis=-1), 1.0, rtol=1e-6)


def test_codebook_labels_count_a_repeated_value_as_the_same_answer():
    # Two identical values at rows 0 and 1: the read-out of key 1 is nearest to row 0 as
    # much as to row 1 (argmax picks 0), wrong by row index, right by label.
    keys = jnp.eye(3, dtype=jnp.float32)
    values = jnp.asarray([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    S = capacity.delta_rule_passes(keys, values, passes=1)
    by_row = capacity.read_out(S, keys, values)
    by_label = capacity.read_out(S, keys, values, codebook_labels=jnp.asarray([7, 7, 9]))
    np.testing.assert_array_equal(by_row["exact"], [True, False, True])
    np.testing.assert_array_equal(by_label["exact"], [True, True, True])
    # a different label on the duplicate makes it wrong again
    other = capacity.read_out(S, keys, values, codebook_labels=jnp.asarray([7, 8, 9]))
    np.testing.assert_array_equal(other["exact"], [True, False, True])
