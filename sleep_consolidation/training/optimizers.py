"""The optimizer: Muon on the blocks' 2-D hidden matrices + AdamW elsewhere (the paper's
split), or AdamW alone; its leaf labels and the learning-rate schedule.

    tx = make_optimizer("muon", learning_rate=2e-3)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import optax
from optax.contrib import muon

from sleep_consolidation.model import Params
from sleep_consolidation.training import estimators

OPTIMIZERS = ("muon", "adamw")
LR_SCHEDULES = ("constant", "cosine")
# Block leaves that are 2-D but not hidden matrices: depthwise conv filters and rule params.
NOT_MUON = frozenset({"conv", "theta"})


def muon_labels(params: Params):
    """Labels each leaf: "muon" for the 2-D hidden matrices of the blocks, "adamw" for the
    rest (embed, unembed, norms, gate biases, depthwise conv filters, rule parameters)."""

    def label(path, leaf):
        names = [getattr(k, "name", getattr(k, "key", None)) for k in path]
        hidden = names[0] == "blocks" and len(leaf.shape) == 2 and not NOT_MUON & set(names)
        return "muon" if hidden else "adamw"

    return jax.tree_util.tree_map_with_path(label, params)


def optimizer_labels(params: Params, name: str = "muon"):
    """Labels each leaf for `make_optimizer`: "theta" for rule parameters (any leaf under
    a "theta" key), else `muon_labels` ("muon" / "adamw") for name="muon" and "adamw" for
    name="adamw"."""
    base = muon_labels(params) if name == "muon" else jax.tree.map(lambda _: "adamw", params)
    return jax.tree.map(
        lambda is_theta, lab: "theta" if is_theta else lab, estimators.theta_mask(params), base
    )


def learning_rate_schedule(
    peak: float, *, kind="constant", warmup_steps=0, total_steps=None, min_lr_ratio=0.1
) -> optax.Schedule:
    """Linear warm-up from 0 to `peak`, then constant or cosine decay to min_lr_ratio*peak.

    Args:
      peak: the learning rate after warm-up.
      kind: "constant" or "cosine" (decays over total_steps - warmup_steps steps).
      warmup_steps: steps of linear warm-up (0: none).
      total_steps: the run's length; needed by "cosine" only.
      min_lr_ratio: the cosine's final rate as a fraction of `peak`.

    Returns:
      an optax schedule: step -> learning rate.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    if kind == "constant":
        main = optax.constant_schedule(peak)
    else:
        if total_steps is None:
            raise ValueError("the cosine schedule needs total_steps")
        decay = max(int(total_steps) - warmup_steps, 1)
        main = optax.cosine_decay_schedule(peak, decay, alpha=min_lr_ratio)
    if not warmup_steps:
        return main
    warm = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warm, main], [warmup_steps])


def make_optimizer(
    name: str = "muon",
    *,
    learning_rate: float = 2e-3,
    adam_learning_rate: float = 5e-5,
    theta_learning_rate: float | None = None,
    lr_schedule: str = "constant",
    warmup_steps: int = 0,
    total_steps: int | None = None,
    min_lr_ratio: float = 0.1,
    clip_norm: float = 1.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """The optimizer: global-norm clipping, then Muon + AdamW (paper) or AdamW alone.

    Args:
      name: "muon": Muon at `learning_rate` (scheduled) on the blocks' 2-D hidden matrices
        (`muon_labels`) and AdamW at the fixed `adam_learning_rate` on the rest, as in the
        paper; "adamw": AdamW at `learning_rate` (scheduled) on everything.
      theta_learning_rate: AdamW's fixed rate on the rules' `theta` leaves (label "theta"
        of `optimizer_labels`), so a meta-learned rule can move faster than the other
        AdamW leaves. None: theta is treated as before (adam_learning_rate under "muon",
        the scheduled learning_rate under "adamw"). The state has the same structure
        either way, so this may change when a run is resumed.
      lr_schedule, warmup_steps, total_steps, min_lr_ratio: see `learning_rate_schedule`.
      clip_norm: global gradient-norm clip; 0 disables it.
      weight_decay: decoupled weight decay of both parts.

    Returns:
      an optax GradientTransformation whose state has the same structure for every
      schedule and clip setting (so those may change when a run is resumed).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    lr = learning_rate_schedule(
        learning_rate, kind=lr_schedule, warmup_steps=warmup_steps, total_steps=total_steps,
        min_lr_ratio=min_lr_ratio,
    )  # fmt: skip
    rest_lr = lr if name == "adamw" else adam_learning_rate
    # Always a schedule, so that the state's structure does not depend on the setting.
    theta_lr = rest_lr if theta_learning_rate is None else theta_learning_rate
    theta_lr = theta_lr if callable(theta_lr) else optax.constant_schedule(theta_lr)
    parts = {
        "adamw": optax.adamw(rest_lr, weight_decay=weight_decay),
        "theta": optax.adamw(theta_lr, weight_decay=weight_decay),
    }
    if name == "muon":
        parts["muon"] = muon(lr, weight_decay=weight_decay)
    inner = optax.multi_transform(parts, functools.partial(optimizer_labels, name=name))
    clip = optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity()
    return optax.chain(clip, inner)


def lr_schedule_from_config(c: Mapping[str, Any]) -> optax.Schedule:
    """The schedule of the scheduled rate (Muon's, or AdamW's under "adamw") of a resolved
    config dict `c` (what the loop logs as `lr`)."""
    return learning_rate_schedule(
        c["learning_rate"], kind=c["lr_schedule"], warmup_steps=c["warmup_steps"],
        total_steps=c["steps"], min_lr_ratio=c["min_lr_ratio"],
    )  # fmt: skip


def optimizer_from_config(c: Mapping[str, Any]) -> optax.GradientTransformation:
    """`make_optimizer` with every option read from a config (a ConfigDict or a mapping)."""
    c = c.to_dict() if hasattr(c, "to_dict") else c
    return make_optimizer(
        c["optimizer"], learning_rate=c["learning_rate"],
        adam_learning_rate=c["adam_learning_rate"],
        theta_learning_rate=c["theta_learning_rate"], lr_schedule=c["lr_schedule"],
        warmup_steps=c["warmup_steps"], total_steps=c["steps"],
        min_lr_ratio=c["min_lr_ratio"], clip_norm=c["clip_norm"],
        weight_decay=c["weight_decay"],
    )  # fmt: skip
