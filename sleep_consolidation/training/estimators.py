"""Meta-gradient estimators behind one interface: full backprop, truncated backprop, ES.

The outer loop does not care which one it uses (learned_optimization's habit):

    def loss_fn(params, batch, grad_passes=None):          # (loss, aux) with has_aux=True
        logits = forward(params, batch.tokens, L, N, grad_passes=grad_passes)
        return masked_cross_entropy(logits, batch.targets, batch.loss_mask), logits

    estimate = make_estimator("es", loss_fn, has_aux=True, num_pairs=8, sigma=0.01)
    (loss, logits), grads = estimate(params, batch, key)   # like jax.value_and_grad

Estimators (`ESTIMATORS`):
  full       exact gradient through every sleep pass (`jax.value_and_grad`).
  truncated  gradient through only the last `grad_passes` passes of each window (loss_fn
             receives `grad_passes=k`, which it forwards to `forward`). With k = N it equals
             `full` exactly.
  es         antithetic evolution strategies: for pairs i = 1..P, eps_i ~ N(0, I) on the
             perturbed leaves,
                 g = sum_i [L(x + sigma eps_i) - L(x - sigma eps_i)] / (2 sigma P) * eps_i,
             an unbiased gradient of the Gaussian-smoothed loss that needs only forward
             evaluations, so the rule need not be differentiable and the unroll is never
             stored for backprop. `es_scope` picks what is perturbed:
               "theta" (default): only leaves under a key named "theta" (the rules'
                 parameters); every other leaf gets its gradient from backprop (full, or
                 truncated when `grad_passes` is set). Use it for a rule whose own update
                 is not (usefully) differentiable w.r.t. theta.
               "all": every leaf; no backprop at all (grad_passes must be None).
             The reported loss (and aux) is the unperturbed one.

`loss_fn` must accept `grad_passes` as a keyword only when an estimator passes one
(`truncated`, or `es` with `grad_passes` set); `full` and forward-only `es` call
`loss_fn(params, batch)`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

ESTIMATORS = ("full", "truncated", "es")
ES_SCOPES = ("theta", "all")
THETA_KEY = "theta"


def _key_name(k) -> Any:
    return getattr(k, "key", getattr(k, "name", None))


def theta_mask(params) -> Any:
    """A pytree of bools like `params`: True for leaves under a key named "theta"."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(_key_name(k) == THETA_KEY for k in path), params
    )


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_estimator_options(name: str, grad_passes: int | None) -> None:
    """Refuses an unknown estimator name, or a grad_passes that does not fit it (one check
    for `make_estimator` and for the run config, so both say the same thing).

    Raises:
      ValueError: naming the estimator and grad_passes.
    """
    if name not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {name!r}")
    if grad_passes is not None:
        _check_positive_int("grad_passes", grad_passes)
    if name == "full" and grad_passes is not None:
        raise ValueError(
            f"estimator 'full' backprops through every pass, but grad_passes={grad_passes} "
            "truncates it: use estimator 'truncated' (or 'es', where it truncates the "
            "non-theta backprop)"
        )
    if name == "truncated" and grad_passes is None:
        raise ValueError("estimator 'truncated' needs grad_passes=k (the passes to backprop)")


def make_estimator(
    name: str,
    loss_fn: Callable,
    *,
    has_aux: bool = False,
    grad_passes: int | None = None,
    num_pairs: int = 8,
    sigma: float = 0.01,
    es_scope: str = "theta",
    es_batch_size: int | None = None,
) -> Callable:
    """Builds `estimate(params, batch, key) -> (loss, grads)` (`((loss, aux), grads)` with
    has_aux), a pure jit-able function; `key` is used by `es` only.

    Args:
      name: one of `ESTIMATORS` (see the module docstring).
      loss_fn: `loss_fn(params, batch[, grad_passes=k]) -> loss` (or `(loss, aux)`).
      has_aux: loss_fn returns `(loss, aux)`.
      grad_passes: `truncated`: k >= 1, required. `es` with es_scope="theta": truncates the
        backprop of the non-theta leaves (None = full). `full`: must be None.
      num_pairs, sigma: `es`: antithetic pairs (2 * num_pairs forward evaluations, plus
        one unperturbed) and the perturbation scale.
      es_scope: `es`: "theta" or "all".
      es_batch_size: `es`: evaluate this many pairs at once (`lax.map` in chunks, vmap
        inside); None = all pairs in one vmap.

    Raises:
      ValueError: an unknown name or scope, or options that do not fit the estimator.
    """
    check_estimator_options(name, grad_passes)
    kw = {} if grad_passes is None else {"grad_passes": grad_passes}
    value_and_grad = jax.value_and_grad(functools.partial(loss_fn, **kw), has_aux=has_aux)
    if name in ("full", "truncated"):
        return lambda params, batch, key=None: value_and_grad(params, batch)

    _check_positive_int("num_pairs", num_pairs)
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0:
        raise ValueError(f"sigma must be a number > 0, got {sigma!r}")
    if es_scope not in ES_SCOPES:
        raise ValueError(f"es_scope must be one of {ES_SCOPES}, got {es_scope!r}")
    if es_scope == "all" and grad_passes is not None:
        raise ValueError("es_scope='all' uses no backprop; grad_passes must be None")
    if es_batch_size is not None:
        _check_positive_int("es_batch_size", es_batch_size)

    def loss_only(params, batch):
        out = loss_fn(params, batch)
        return out[0] if has_aux else out

    def estimate(params, batch, key):
        mask = theta_mask(params) if es_scope == "theta" else jax.tree.map(lambda _: True, params)
        if es_scope == "all":
            out = loss_fn(params, batch)
            grads = jax.tree.map(jnp.zeros_like, params)
        else:
            out, grads = value_and_grad(params, batch)
        es_grads = es_gradient(
            loss_only, params, batch, key, mask, num_pairs=num_pairs, sigma=sigma,
            batch_size=es_batch_size,
        )  # fmt: skip
        grads = jax.tree.map(lambda m, e, g: e if m else g, mask, es_grads, grads)
        return out, grads

    return estimate


def es_gradient(
    loss_only: Callable,
    params,
    batch,
    key: jax.Array,
    mask,
    *,
    num_pairs: int,
    sigma: float,
    batch_size: int | None = None,
):
    """The antithetic ES gradient of `loss_only(params, batch)` w.r.t. the masked leaves.

    Returns:
      a pytree like `params`: the estimate on leaves where `mask` is True, zeros elsewhere.

    Raises:
      ValueError: `mask` selects no leaf (e.g. es_scope="theta" for a rule without theta).
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    on = [i for i, m in enumerate(treedef.flatten_up_to(mask)) if m]
    if not on:
        raise ValueError(
            "ES has nothing to perturb: no leaf under a 'theta' key (a rule without "
            "parameters?); use es_scope='all' or another estimator"
        )
    keys = jax.random.split(key, len(on))
    eps = [
        jax.random.normal(k, (num_pairs, *jnp.shape(leaves[i])), jnp.result_type(leaves[i]))
        for k, i in zip(keys, on)
    ]

    def shifted(noise, scale):
        new = list(leaves)
        for j, i in enumerate(on):
            new[i] = leaves[i] + scale * noise[j]
        return loss_only(treedef.unflatten(new), batch)

    def pair(noise):
        return shifted(noise, sigma) - shifted(noise, -sigma)

    if batch_size is None:
        diffs = jax.vmap(pair)(eps)
    else:
        diffs = jax.lax.map(pair, eps, batch_size=min(batch_size, num_pairs))
    coeff = diffs.astype(jnp.float32) / (2.0 * sigma * num_pairs)  # [P]
    out = [jnp.zeros_like(x) for x in leaves]
    for j, i in enumerate(on):
        out[i] = jnp.tensordot(coeff, eps[j], axes=1).astype(jnp.result_type(leaves[i]))
    return treedef.unflatten(out)


__all__ = ["ESTIMATORS", "ES_SCOPES", "es_gradient", "make_estimator", "theta_mask"]
