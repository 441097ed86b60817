"""The training loss: next-token cross-entropy over the answer tokens of a batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_cross_entropy(logits, targets, mask):
    """Mean next-token cross-entropy over answer tokens.

    Args:
      logits: [B, T, V]; targets: int [B, T]; mask: [B, T], > 0 on answer tokens.

    Returns:
      float32 scalar: sum(mask * nll) / sum(mask) (0 if the mask is empty).
    """
    logits = logits.astype(jnp.float32)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    w = jnp.where(mask > 0, mask, 0.0).astype(jnp.float32)
    # `where`, not a product: a NaN at an unsupervised position must not reach the loss
    # value (it still reaches the gradient, where the grad-norm check catches it).
    return jnp.sum(jnp.where(w > 0, nll, 0.0) * w) / jnp.maximum(jnp.sum(w), 1.0)
