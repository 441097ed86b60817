"""What the fast weights store: linear probes of the memory that crosses a window boundary.

    x = fast_weight_features(params, tokens, window=L, passes=N)   # [B, F]
    result = ridge_probe(x[:n], y[:n], x[n:], y[n:])             # y: {0, 1} targets [B, K]
    result["accuracy"]                                           # [K] held-out accuracy

A model that answers a question about an evicted window either wrote the answer into its
fast weights (computing while it wrote, or while it slept) or wrote raw material and
computes at the query. If a linear read-out of S recovers the answer, the first happened:
the query window has nothing left to compute. The probe is a ridge regression on +-1
targets, closed form (`ridge_probe`), checked against a plain least-squares solve of the
same problem (`ridge_probe_reference`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sleep_consolidation.analysis.diagnostics import window_loop
from sleep_consolidation.config import check_tokens
from sleep_consolidation.model import Params

LAMBDAS = (1e-2, 1.0, 1e2)  # times the number of features (BUILD_NOTES.md "The fast-weight probe")
_STD_FLOOR = 1e-8


def fast_weight_features(
    params: Params, tokens, window: int, passes: int, *, schedule=None, **schedule_kwargs
) -> jax.Array:
    """The fast weights after the last full window's consolidation (and eviction), every
    ssm block's S [B, H, dk, dv] flattened and concatenated in `cfg.ssm_blocks` order:
    [B, F]. A trailing partial window is dropped (it never reaches the memory).

    Raises:
      ValueError: the model has no ssm block (no fast weights), or `tokens` hold no full
        window.
    """
    cfg = params.config
    if not cfg.ssm_blocks:
        raise ValueError(f"the model has no ssm block, so no fast weights: layout {cfg.layout}")
    check_tokens(tokens, cfg.vocab_size, rank=2)
    tokens = jnp.asarray(tokens)
    full = (tokens.shape[1] // window) * window
    if full == 0:
        raise ValueError(f"tokens hold no full window: T={tokens.shape[1]} < window={window}")
    _, _, fast = window_loop(
        params, tokens[:, :full], window, passes, schedule=schedule, **schedule_kwargs
    )
    B = tokens.shape[0]
    return jnp.concatenate([fast[b].reshape(B, -1) for b in cfg.ssm_blocks], axis=1)


def _check_probe_inputs(train_x, train_y, test_x, test_y, lambdas, val_fraction):
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    for name, a in arrays.items():
        if a.ndim != 2:
            raise ValueError(f"{name} must be 2-D [examples, columns], got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has non-finite entries")
    for y_name in ("train_y", "test_y"):
        if not np.all((arrays[y_name] == 0) | (arrays[y_name] == 1)):
            raise ValueError(f"{y_name} must hold 0/1 targets")
    if test_x.shape[0] < 1:
        raise ValueError("test_x has no rows: nothing to score the probe on")
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ValueError(
            f"examples differ: train_x {train_x.shape[0]} vs train_y {train_y.shape[0]}, "
            f"test_x {test_x.shape[0]} vs test_y {test_y.shape[0]}"
        )
    if train_x.shape[1] != test_x.shape[1] or train_y.shape[1] != test_y.shape[1]:
        raise ValueError(
            f"columns differ between train and test: x {train_x.shape[1]} vs "
            f"{test_x.shape[1]}, y {train_y.shape[1]} vs {test_y.shape[1]}"
        )
    if not lambdas or any(not lam > 0 for lam in lambdas):
        raise ValueError(f"lambdas must be positive, got {tuple(lambdas)}")
    n_val = int(round(train_x.shape[0] * val_fraction))
    if not 0 < n_val < train_x.shape[0] - 1:
        raise ValueError(
            f"val_fraction {val_fraction} of {train_x.shape[0]} training examples leaves no "
            "validation or no fitting set"
        )
    return n_val


def _standardise(fit_x, *others):
    mean = fit_x.mean(axis=0)
    std = np.maximum(fit_x.std(axis=0), _STD_FLOOR)
    return [(a - mean) / std for a in (fit_x, *others)]


def _fit(x, y_pm, lam):
    """Ridge weights [F, K] and intercepts [K] for standardised x (columns centred), by the
    normal equations: (X^T X + lam F I) w = X^T (y - mean y)."""
    F = x.shape[1]
    b = y_pm.mean(axis=0)
    gram = x.T @ x + lam * F * np.eye(F)
    w = np.linalg.solve(gram, x.T @ (y_pm - b))
    return w, b


def _fit_reference(x, y_pm, lam):
    """The same ridge problem as a least-squares solve of the augmented system
    [X; sqrt(lam F) I] w = [y - mean y; 0] (the reference `_fit` is tested against)."""
    F = x.shape[1]
    b = y_pm.mean(axis=0)
    aug_x = np.concatenate([x, np.sqrt(lam * F) * np.eye(F)], axis=0)
    aug_y = np.concatenate([y_pm - b, np.zeros((F, y_pm.shape[1]))], axis=0)
    w = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
    return w, b


def _accuracy(x, w, b, y01):
    pred = (x @ w + b) > 0
    return (pred == (y01 > 0.5)).mean(axis=0)


def _probe(fit, train_x, train_y, test_x, test_y, lambdas, val_fraction):
    train_x, train_y, test_x, test_y = (
        np.asarray(a, np.float64) for a in (train_x, train_y, test_x, test_y)
    )
    n_val = _check_probe_inputs(train_x, train_y, test_x, test_y, lambdas, val_fraction)
    lambdas = tuple(sorted(lambdas))  # ascending: a tie goes to the least regularised
    y_pm = 2.0 * train_y - 1.0
    # Choose lambda per target on the last val_fraction of the training split...
    fx, vx = _standardise(train_x[:-n_val], train_x[-n_val:])
    val_acc = np.stack(
        [_accuracy(vx, *fit(fx, y_pm[:-n_val], lam), train_y[-n_val:]) for lam in lambdas]
    )  # [len(lambdas), K]
    best = np.argmax(val_acc, axis=0)  # the first of the best
    # ... then refit on the whole training split and score the held-out set once.
    tx, sx = _standardise(train_x, test_x)
    fits = [fit(tx, y_pm, lam) for lam in lambdas]
    acc = np.stack([_accuracy(sx, w, b, test_y) for w, b in fits])
    K = train_y.shape[1]
    return {
        "accuracy": acc[best, np.arange(K)],
        "lambda": np.asarray(lambdas, np.float64)[best],
        "val_accuracy": val_acc[best, np.arange(K)],
        "majority": np.maximum(test_y.mean(axis=0), 1.0 - test_y.mean(axis=0)),
    }


def ridge_probe(
    train_x, train_y, test_x, test_y, *, lambdas: Sequence[float] = LAMBDAS,
    val_fraction: float = 0.2,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Held-out accuracy of one linear probe per target column.

    Features are standardised on the fitting rows; each target (0/1) is regressed on +-1
    with ridge penalty lam * F (F features), lam chosen per target from `lambdas` by
    accuracy on the last `val_fraction` of the training rows; the probe is then refit on
    all training rows and scored once on the test rows (sign agreement).

    Returns (numpy, one entry per target column):
      "accuracy" held-out accuracy, "lambda" the chosen lam, "val_accuracy" its validation
      accuracy, "majority" the held-out rate of the commoner class (the constant answer).

    Raises:
      ValueError: shapes that disagree, targets not 0/1, non-finite entries, a
        non-positive lambda or a validation split that leaves nothing to fit.
    """
    return _probe(_fit, train_x, train_y, test_x, test_y, lambdas, val_fraction)


def ridge_probe_reference(
    train_x, train_y, test_x, test_y, *, lambdas: Sequence[float] = LAMBDAS,
    val_fraction: float = 0.2,
) -> dict[str, np.ndarray]:  # fmt: skip
    """`ridge_probe` with each fit solved as an augmented least-squares problem instead of
    the normal equations (slower, the check that the closed form is right)."""
    return _probe(_fit_reference, train_x, train_y, test_x, test_y, lambdas, val_fraction)


__all__ = ["LAMBDAS", "fast_weight_features", "ridge_probe", "ridge_probe_reference"]
