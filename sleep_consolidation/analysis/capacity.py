"""The no-learning reference: what N sweeps of the plain delta rule over a window's keys
and values recall, with nothing trained.

    keys = random_unit_vectors(jax.random.key(0), n=16, d=16)        # [n, d_k]
    out = delta_recall(keys, values, passes=4)                      # cosine, exact, ...
    curve = recall_by_passes(keys, values, max_passes=8)            # N = 1..8 at once

One pass writes item t as S <- S + beta k_t (v_t - S^T k_t)^T (S [d_k, d_v] from 0), for
t = 1..n; N passes repeat the sweep from where the last one ended (the paper's N: pass 1
is the wake pass, passes 2..N the sleep). With beta = 1 and unit keys each write makes
the item just written exact; N sweeps are Kaczmarz's method on S^T K^T = V^T, so for
linearly independent keys (n <= d_k) the recall converges to exact as N grows, and for
orthonormal keys one pass is already exact. Beyond n = d_k no S stores every item.

This is the reference a trained model is compared with on the capacity map: the model's
learned keys either beat it (they are better separated than random ones) or trail it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_EPS = 1e-12


def random_unit_vectors(key: jax.Array, n: int, d: int) -> jax.Array:
    """n random unit vectors in R^d (Gaussian, normalised: uniform on the sphere).

    Args:
      key: a PRNG key; n: how many; d: the dimension.

    Returns:
      float32 [n, d], rows of norm 1.
    """
    x = jax.random.normal(key, (n, d), jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _sweep(S, keys, values, beta):
    def write(S, kv):
        k, v = kv
        return S + beta * jnp.outer(k, v - S.T @ k), None

    return jax.lax.scan(write, S, (keys, values))[0]


@functools.partial(jax.jit, static_argnames="passes")
def delta_rule_passes(keys, values, passes: int, beta=1.0) -> jax.Array:
    """The fast weights after `passes` sweeps of the delta rule over (keys, values).

    Args:
      keys: [n, d_k]; values: [n, d_v]; passes: N >= 1 (static); beta: the write rate.

    Returns:
      S [d_k, d_v] (read out as S^T k).
    """
    S = jnp.zeros((keys.shape[-1], values.shape[-1]), jnp.float32)
    return jax.lax.fori_loop(0, passes, lambda _, S: _sweep(S, keys, values, beta), S)


def read_out(
    S, keys, values, codebook=None, value_ids=None, codebook_labels=None
) -> dict[str, jax.Array]:
    """How well S recalls each value from its key.

    Args:
      S: [d_k, d_v]; keys: [n, d_k]; values: [n, d_v].
      codebook: [m, d_v] the candidate values (default: `values` themselves).
      value_ids: int [n], the codebook row of each value (default: 0..n-1).
      codebook_labels: int [m], what each codebook row stands for (default: its index):
        a read-out is exact when its nearest row has the label of the value's row, so
        rows that repeat a label (a value token stored twice) count as the same answer.

    Returns:
      dict: "cosine" [n] cos(S^T k_i, v_i); "exact" [n] bool, whether the codebook row
      nearest to S^T k_i in cosine is v_i's (the model reads through a norm, so scale
      does not count); "rel_error" [n] |S^T k_i - v_i| / |v_i|; and their means
      "mean_cosine", "accuracy", "mean_rel_error".
    """
    if codebook is None:
        codebook, value_ids = values, jnp.arange(values.shape[0])
    elif value_ids is None:
        raise ValueError("value_ids (the codebook row of each value) is needed with a codebook")
    r = keys @ S  # [n, d_v]: row i is S^T k_i
    rn = jnp.linalg.norm(r, axis=-1)
    cos = jnp.sum(r * values, -1) / jnp.maximum(rn * jnp.linalg.norm(values, axis=-1), _EPS)
    cn = codebook / jnp.maximum(jnp.linalg.norm(codebook, axis=-1, keepdims=True), _EPS)
    nearest = jnp.argmax(r @ cn.T, axis=-1)
    if codebook_labels is None:
        exact = nearest == value_ids
    else:
        exact = codebook_labels[nearest] == codebook_labels[value_ids]
    err = jnp.linalg.norm(r - values, axis=-1) / jnp.maximum(jnp.linalg.norm(values, axis=-1), _EPS)
    return {
        "cosine": cos,
        "exact": exact,
        "rel_error": err,
        "mean_cosine": jnp.mean(cos),
        "accuracy": jnp.mean(exact.astype(jnp.float32)),
        "mean_rel_error": jnp.mean(err),
    }


def delta_recall(
    keys, values, passes: int, beta=1.0, codebook=None, value_ids=None, codebook_labels=None
):
    """`read_out` of `delta_rule_passes(keys, values, passes, beta)`: the no-learning
    recall after N passes. Args as there; returns `read_out`'s dict."""
    S = delta_rule_passes(keys, values, passes, beta)
    return read_out(S, keys, values, codebook, value_ids, codebook_labels)


@functools.partial(jax.jit, static_argnames="max_passes")
def _curve(keys, values, max_passes, beta, codebook, value_ids, codebook_labels):
    def one(S, _):
        S = _sweep(S, keys, values, beta)
        m = read_out(S, keys, values, codebook, value_ids, codebook_labels)
        return S, (m["mean_cosine"], m["accuracy"], m["mean_rel_error"])

    S = jnp.zeros((keys.shape[-1], values.shape[-1]), jnp.float32)
    return jax.lax.scan(one, S, None, length=max_passes)[1]


def recall_by_passes(
    keys, values, max_passes: int, beta=1.0, codebook=None, value_ids=None, codebook_labels=None
) -> dict[str, jax.Array]:
    """The no-learning recall after N = 1..max_passes passes, in one scan.

    Returns:
      dict of [max_passes] arrays (index N-1): "mean_cosine", "accuracy",
      "mean_rel_error" (`read_out`'s means).
    """
    if codebook is None:
        codebook, value_ids = values, jnp.arange(values.shape[0])
    elif value_ids is None:
        raise ValueError("value_ids (the codebook row of each value) is needed with a codebook")
    cos, acc, err = _curve(keys, values, max_passes, beta, codebook, value_ids, codebook_labels)
    return {"mean_cosine": cos, "accuracy": acc, "mean_rel_error": err}


def random_reference(
    key: jax.Array, n: int, d: int, max_passes: int, *, num_values: int = 64, beta=1.0
) -> dict[str, jax.Array]:
    """`recall_by_passes` for n random unit keys in R^d storing values drawn (with
    replacement) from a codebook of `num_values` random unit vectors in R^d, the shape of
    the recall task (its values come from a vocabulary; exact = the right entry).

    Returns:
      `recall_by_passes`' dict ([max_passes] arrays).
    """
    kk, kc, ki = jax.random.split(key, 3)
    keys = random_unit_vectors(kk, n, d)
    codebook = random_unit_vectors(kc, num_values, d)
    ids = jax.random.randint(ki, (n,), 0, num_values)
    return recall_by_passes(keys, codebook[ids], max_passes, beta, codebook, ids)


__all__ = [
    "delta_recall",
    "delta_rule_passes",
    "random_reference",
    "random_unit_vectors",
    "read_out",
    "recall_by_passes",
]
