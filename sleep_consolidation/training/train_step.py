"""The train step: `TrainState`, the jitted `train_step(state, batch) -> (state, metrics)`
and the check that its loss and gradient norm are finite.

    tx = make_optimizer("muon", learning_rate=2e-3)
    state = init_train_state(init_params(cfg, key), tx)
    train_step = make_train_step(tx, window=24, passes=2)
    state, metrics = train_step(state, task.batch(seed, step, batch_size))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sleep_consolidation.config import (
    Schedule,
    check_loop,
    resolve_schedule,
)
from sleep_consolidation.model import Params
from sleep_consolidation.sequence import forward
from sleep_consolidation.training import estimators, sharding
from sleep_consolidation.training.losses import masked_cross_entropy
from sleep_consolidation.training.run_config import RunSpec, check_int


@flax.struct.dataclass
class TrainState:
    """What a training run carries from step to step (and checkpoints)."""

    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Params
    opt_state: optax.OptState


def init_train_state(params: Params, tx: optax.GradientTransformation) -> TrainState:
    """A fresh `TrainState` at step 0.

    Args:
      params: the initial slow weights (`init_params`).
      tx: the optimizer whose state is initialised for `params`.

    Returns:
      TrainState(step=0, params, tx.init(params)).
    """
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


class NonFiniteError(FloatingPointError):
    """A NaN/Inf training loss or gradient norm; the run stops without saving that state."""

    def __init__(self, step: int, quantity: str, value: float):
        self.step, self.quantity, self.value = step, quantity, value
        super().__init__(
            f"non-finite {quantity} ({value}) at step {step}; training stopped and the bad "
            "state was not saved (the last good checkpoint is kept)"
        )


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
    """Raises NonFiniteError naming `step` and the quantity if the loss or grad norm is
    NaN/Inf (the loss is checked first)."""
    for quantity in ("loss", "grad_norm"):
        value = float(metrics[quantity])
        if not math.isfinite(value):
            raise NonFiniteError(step, quantity, value)


def make_train_step(
    tx: optax.GradientTransformation,
    *,
    window: int,
    passes: int = 1,
    schedule: Schedule | None = None,
    remat: str = "none",
    grad_passes: int | None = None,
    estimator: str | None = None,
    es_pairs: int = 8,
    es_sigma: float = 0.01,
    es_scope: str = "theta",
    seed: int = 0,
    donate: bool | None = None,
    mesh: jax.sharding.Mesh | None = None,
    loss_positions: tuple[int, ...] | None = None,
    microbatches: int = 1,
    **schedule_kwargs,
):
    """Builds the jitted `train_step(train_state, batch) -> (train_state, metrics)`.

    Args:
      tx: the optimizer (`make_optimizer`).
      window, passes, schedule (or its fields as keywords), remat, grad_passes: forwarded
        to `forward`; grad_passes=None is full backprop through every pass, k truncates
        each window's gradient to its last k passes.
      estimator: the meta-gradient estimator (`estimators.make_estimator`): "full",
        "truncated" (needs grad_passes) or "es" (es_pairs antithetic pairs at scale
        es_sigma on the rules' theta (es_scope="theta"; the rest by backprop, truncated if
        grad_passes is set) or on everything ("all")). None: "truncated" if grad_passes
        is set, else "full".
      seed: ES noise of step s uses `fold_in(key(seed), s)` (so a resumed run repeats it).
      donate: donate the input state's buffers (default: on accelerators, not on CPU).
      mesh: data parallelism over this mesh (`sharding.make_data_mesh`): the state (and
        the metrics) replicated, the batch split along B (`sharding.shard_batch`). XLA
        inserts the gradient all-reduce; the result equals one device's up to rounding.
      loss_positions: static positions that can carry loss (a task's `answer_positions`):
        logits are computed there only. None = every position. The loss is the same
        (up to the order of its sum) as long as `loss_mask` is zero elsewhere.
      microbatches: M > 1 splits the batch into M micro-batches (example b in micro-batch
        b % M) whose gradients are accumulated in a `lax.scan` and weighted by their
        answer counts, so the step equals the whole-batch step up to rounding. On CPU the
        smaller activations stay in cache (1.7x at batch 64, BUILD_NOTES.md); on an
        accelerator keep M = 1 unless memory demands it.

    Returns:
      a pure jitted function. `batch` needs `tokens`, `targets`, `loss_mask` ([B, T]);
      metrics are device scalars `loss`, `grad_norm` (before clipping), `token_acc`.
    """
    schedule = resolve_schedule(schedule, schedule_kwargs)
    check_loop(window, passes, remat=remat, grad_passes=grad_passes)
    check_int("microbatches", microbatches, 1)
    if estimator is None:
        estimator = "full" if grad_passes is None else "truncated"

    def at_loss_positions(x):
        return x if loss_positions is None else x[:, np.asarray(loss_positions)]

    def loss_fn(params, batch, grad_passes=None):
        logits = forward(
            params, batch.tokens, window, passes, schedule=schedule, remat=remat,
            grad_passes=grad_passes, positions=loss_positions,
        )  # fmt: skip
        targets, mask = at_loss_positions(batch.targets), at_loss_positions(batch.loss_mask)
        return masked_cross_entropy(logits, targets, mask), logits

    estimate = estimators.make_estimator(
        estimator, loss_fn, has_aux=True, grad_passes=grad_passes, num_pairs=es_pairs,
        sigma=es_sigma, es_scope=es_scope,
    )  # fmt: skip
    base_key = jax.random.key(seed)

    def accumulate(params, batch, key):
        """`estimate` over `microbatches` parts of the batch, recombined exactly."""
        M = microbatches
        if batch.tokens.shape[0] % M:
            raise ValueError(f"batch size {batch.tokens.shape[0]} is not divisible by {M=}")

        def split(x):  # [B, ...] -> [M, B/M, ...], example b in part b % M
            return jnp.swapaxes(x.reshape(x.shape[0] // M, M, *x.shape[1:]), 0, 1)

        def part_step(acc, part):
            (loss, logits), grads = estimate(params, part, key)
            answers = jnp.sum(jnp.where(part.loss_mask > 0, part.loss_mask, 0.0))
            # masked_cross_entropy divides by max(answers, 1): undo it for this part.
            weight = jnp.where(answers > 0, jnp.maximum(answers, 1.0), 0.0)
            acc = jax.tree.map(lambda a, x: a + weight * x, acc, (loss, grads))
            return acc, (logits, answers)

        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (loss_sum, grad_sum), (logits, answers) = jax.lax.scan(
            part_step, zero, jax.tree.map(split, batch)
        )
        total = jnp.maximum(jnp.sum(answers), 1.0)
        logits = jnp.swapaxes(logits, 0, 1).reshape(-1, *logits.shape[2:])
        return (loss_sum / total, logits), jax.tree.map(lambda g: g / total, grad_sum)

    if microbatches == 1:
        accumulate = estimate  # noqa: F811  (one part: the plain estimator)

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(base_key, state.step)
        (loss, logits), grads = accumulate(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        on = at_loss_positions(batch.loss_mask) > 0
        right = (jnp.argmax(logits, -1) == at_loss_positions(batch.targets)) & on
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "token_acc": jnp.sum(right) / jnp.maximum(jnp.sum(on), 1),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    if donate is None:
        donate = jax.default_backend() != "cpu"
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(train_step, donate_argnums=donate_argnums)
    repl = sharding.replicated(mesh)
    return jax.jit(
        train_step, donate_argnums=donate_argnums,
        in_shardings=(repl, sharding.batch_sharded(mesh)), out_shardings=(repl, repl),
    )  # fmt: skip


def train_step_from_config(
    c: dict[str, Any], spec: RunSpec, tx, mesh=None, passes=None, eviction=None
):
    """`make_train_step` with every option read from a resolved config.

    Args:
      c: the config as a dict (`run_config.config_to_dict`); spec: `resolve_config(c)`.
      tx: the optimizer (`optimizer_from_config(c)`); mesh: as in `make_train_step`.
      passes: N of this step (a curriculum's); None: the config's `passes`.
      eviction: the eviction mode of this step (a warm-up's); None: the schedule's.

    Returns:
      the jitted train step.
    """
    passes = c["passes"] if passes is None else passes
    schedule = spec.schedule
    if eviction is not None and eviction != schedule.eviction:
        schedule = dataclasses.replace(schedule, eviction=eviction)
    return make_train_step(
        tx, window=spec.window, passes=passes, schedule=schedule, remat=c["remat"],
        grad_passes=c["grad_passes"], estimator=c["estimator"], es_pairs=c["es_pairs"],
        es_sigma=c["es_sigma"], es_scope=c["es_scope"], seed=c["seed"], mesh=mesh,
        loss_positions=spec.task.answer_positions, microbatches=c["microbatches"],
    )  # fmt: skip
