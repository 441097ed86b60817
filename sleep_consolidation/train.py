"""Training: masked loss, optimizer, the jitted train step, evaluation and the outer loop.

A library module (it never reads flags): `experiments/train.py` parses the flags and calls
`train_and_evaluate(config, workdir)`; a notebook can use every piece on its own.

    tx = make_optimizer("muon", learning_rate=2e-3)
    state = init_train_state(init_params(cfg, key), tx)
    train_step = make_train_step(tx, window=24, passes=2)
    state, metrics = train_step(state, task.batch(seed, step, batch_size))
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from optax.contrib import muon

from sleep_consolidation import checkpointing, estimators, parametric, sharding
from sleep_consolidation.config import (
    ModelConfig,
    Schedule,
    check_grad_passes,
    check_window_and_passes,
)
from sleep_consolidation.model import Params, init_params
from sleep_consolidation.sequence import REMAT_MODES, forward
from sleep_consolidation.tasks import Task, make_task
from sleep_consolidation.tasks.base import metrics_from_sums, per_depth_sums

OPTIMIZERS = ("muon", "adamw")
LR_SCHEDULES = ("constant", "cosine")
# ModelConfig fields a config sets directly (vocab_size comes from the task).
MODEL_FIELDS = (
    "d_model", "num_heads", "layout", "rule", "head_dim", "mlp_ratio", "conv_size",
    "rope_base", "impl", "chunk_size",
)  # fmt: skip
SCHEDULE_FIELDS = ("eviction", "reset_between_passes", "reinject_embedding", "loop_blocks")
OPTIMIZER_FIELDS = (
    "optimizer", "learning_rate", "adam_learning_rate", "theta_learning_rate", "lr_schedule",
    "warmup_steps", "min_lr_ratio", "clip_norm", "weight_decay",
)  # fmt: skip
# Meta-gradient estimator (estimators.py) and the module that registers a custom rule.
ESTIMATOR_FIELDS = ("estimator", "es_pairs", "es_sigma", "es_scope")
CONFIG_FIELDS_EXTRA = ("rule_module",)
LOOP_FIELDS = (
    "window", "passes", "grad_passes", "remat", "batch_size", "steps", "seed", "log_every",
    "eval_every", "eval_size", "eval_batch_size", "checkpoint_every", "keep_checkpoints",
    "eval_passes", "data_parallel",
)  # fmt: skip
CONFIG_FIELDS = (
    "task", *MODEL_FIELDS, *SCHEDULE_FIELDS, *OPTIMIZER_FIELDS, *LOOP_FIELDS,
    *ESTIMATOR_FIELDS, *CONFIG_FIELDS_EXTRA,
)  # fmt: skip
# Block leaves that are 2-D but not hidden matrices: depthwise conv filters and rule params.
NOT_MUON = frozenset({"conv", "theta"})
METRICS_FILE = "metrics.jsonl"
THETA_FILE = "theta.jsonl"  # rule="parametric": describe_theta per ssm layer at eval steps
SUMMARY_FILE = "summary.json"


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


class ConfigConflictError(ValueError):
    """The workdir holds a run whose model, task or optimizer differs from the config."""


# ---------------------------------------------------------------------------------------
# Loss, state, optimizer
# ---------------------------------------------------------------------------------------


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


@flax.struct.dataclass
class TrainState:
    """What a training run carries from step to step (and checkpoints)."""

    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Params
    opt_state: optax.OptState


def init_train_state(params: Params, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


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
    """Linear warm-up from 0 to `peak`, then constant or cosine decay to min_lr_ratio*peak."""
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


# ---------------------------------------------------------------------------------------
# Train step and evaluation
# ---------------------------------------------------------------------------------------


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

    Returns:
      a pure jitted function. `batch` needs `tokens`, `targets`, `loss_mask` ([B, T]);
      metrics are device scalars `loss`, `grad_norm` (before clipping), `token_acc`.
    """
    if schedule is None:
        schedule = Schedule(**schedule_kwargs)
    elif schedule_kwargs:
        raise ValueError("pass either schedule= or its fields as keywords, not both")
    check_window_and_passes(window, passes)
    if remat not in REMAT_MODES:
        raise ValueError(f"remat must be one of {REMAT_MODES}, got {remat!r}")
    check_grad_passes(grad_passes, passes)
    if estimator is None:
        estimator = "full" if grad_passes is None else "truncated"

    def loss_fn(params, batch, grad_passes=None):
        logits = forward(
            params, batch.tokens, window, passes, schedule=schedule, remat=remat,
            grad_passes=grad_passes,
        )  # fmt: skip
        return masked_cross_entropy(logits, batch.targets, batch.loss_mask), logits

    estimate = estimators.make_estimator(
        estimator, loss_fn, has_aux=True, grad_passes=grad_passes, num_pairs=es_pairs,
        sigma=es_sigma, es_scope=es_scope,
    )  # fmt: skip
    base_key = jax.random.key(seed)

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(base_key, state.step)
        (loss, logits), grads = estimate(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        on = batch.loss_mask > 0
        right = (jnp.argmax(logits, -1) == batch.targets) & on
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


_EVAL_STATIC = ("window", "passes", "schedule", "depths")


def _eval_sums_fn(params, batch, window, passes, schedule, depths):
    logits = forward(params, batch.tokens, window, passes, schedule=schedule)
    return per_depth_sums(logits, batch, depths)


_eval_sums = jax.jit(_eval_sums_fn, static_argnames=_EVAL_STATIC)


@functools.lru_cache(maxsize=8)
def _eval_sums_on(mesh: jax.sharding.Mesh):
    # Replicated sums: every process can read them (and they stay replicated when added).
    return jax.jit(
        _eval_sums_fn, static_argnames=_EVAL_STATIC, out_shardings=sharding.replicated(mesh)
    )


def evaluate(
    params: Params,
    task: Task,
    batch,
    *,
    window: int | None = None,
    passes: int = 1,
    schedule: Schedule | None = None,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    **schedule_kwargs,
) -> dict[str, float]:
    """The task metric per depth on `batch` (e.g. `task.eval_batch(seed, size)`).

    Args:
      window: eviction window (default `task.default_window`); passes, schedule (or its
        fields as keywords): as in `forward`.
      batch_size: examples per forward call (the last call is padded with empty rows).
      mesh: split each call's examples over this data-parallel mesh (`params` replicated
        on it); batch_size is rounded up to a multiple of its device count.

    Returns:
      Python floats `loss`, `acc` and `loss/d={d}`, `acc/d={d}` for d in `task.depths`
      (exact-answer accuracy; NaN for a depth with no answers in `batch`).
    """
    if schedule is None:
        schedule = Schedule(**schedule_kwargs)
    elif schedule_kwargs:
        raise ValueError("pass either schedule= or its fields as keywords, not both")
    window = task.default_window if window is None else window
    depths = tuple(task.depths)
    n = int(batch.tokens.shape[0])
    chunk = max(1, min(batch_size, n))
    if mesh is not None:
        chunk += -chunk % mesh.devices.size
    pad = -n % chunk
    fields = {f.name: np.asarray(getattr(batch, f.name)) for f in dataclasses.fields(batch)}
    if pad:  # empty rows: no loss mask, group -1, so they add nothing to the sums
        fill = {"group": -1}
        fields = {
            k: np.concatenate([v, np.full((pad, *v.shape[1:]), fill.get(k, 0), v.dtype)])
            for k, v in fields.items()
        }
    padded = type(batch)(**fields)
    sums_fn = _eval_sums if mesh is None else _eval_sums_on(mesh)
    sums = None
    for i in range(0, n + pad, chunk):
        part_batch = padded[i : i + chunk]
        if mesh is not None:
            part_batch = sharding.shard_batch(part_batch, mesh)
        part = sums_fn(params, part_batch, window, passes, schedule, depths)
        sums = part if sums is None else jax.tree_util.tree_map(jnp.add, sums, part)
    return {k: float(v) for k, v in metrics_from_sums(sums, depths).items()}


# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The objects a validated config resolves to."""

    task: Task
    model_config: ModelConfig
    schedule: Schedule
    window: int


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_optional_int(name, value, minimum):
    if value is not None:
        _check_int(name, value, minimum)


def _check_float(name, value, lo, hi=math.inf, lo_open=False):
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and value <= hi and (value > lo if lo_open else value >= lo)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi == math.inf else ']'}"
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")


def _to_dict(config) -> dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def resolve_config(config) -> RunSpec:
    """Validates a run config (a ConfigDict or a mapping) and builds its objects.

    Raises:
      ValueError: "invalid config: ..." for unknown or missing fields, an unknown task /
        task knob / rule / block kind, or an out-of-range value (the message names the
        field). Nothing is compiled.
    """
    try:
        return _resolve_config(_to_dict(config))
    except ValueError as e:
        raise ValueError(f"invalid config: {e}") from e


def _resolve_config(c: dict[str, Any]) -> RunSpec:
    unknown = sorted(set(c) - set(CONFIG_FIELDS))
    missing = sorted(set(CONFIG_FIELDS) - set(c))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; known fields: {list(CONFIG_FIELDS)}")
    if missing:
        raise ValueError(f"config is missing field(s) {missing}")
    if not isinstance(c["task"], Mapping) or "name" not in c["task"]:
        raise ValueError("config.task must be a dict with a 'name' (and the task's knobs)")
    import_rule_module(c["rule_module"])
    knobs = dict(c["task"])
    task = make_task(knobs.pop("name"), **knobs)
    model_config = ModelConfig(vocab_size=task.vocab_size, **{f: c[f] for f in MODEL_FIELDS})
    schedule = Schedule(**{f: c[f] for f in SCHEDULE_FIELDS})
    schedule.loop_range(model_config)
    window = task.default_window if c["window"] is None else c["window"]
    check_window_and_passes(window, c["passes"])
    check_grad_passes(c["grad_passes"], c["passes"])
    if c["remat"] not in REMAT_MODES:
        raise ValueError(f"config.remat must be one of {REMAT_MODES}, got {c['remat']!r}")
    if c["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"config.optimizer must be one of {OPTIMIZERS}, got {c['optimizer']!r}")
    if c["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(
            f"config.lr_schedule must be one of {LR_SCHEDULES}, got {c['lr_schedule']!r}"
        )
    _check_float("learning_rate", c["learning_rate"], 0.0, lo_open=True)
    _check_float("adam_learning_rate", c["adam_learning_rate"], 0.0, lo_open=True)
    if c["theta_learning_rate"] is not None:
        _check_float("theta_learning_rate", c["theta_learning_rate"], 0.0, lo_open=True)
    _check_estimator(c)
    _check_float("min_lr_ratio", c["min_lr_ratio"], 0.0, 1.0)
    _check_float("clip_norm", c["clip_norm"], 0.0)
    _check_float("weight_decay", c["weight_decay"], 0.0)
    _check_int("warmup_steps", c["warmup_steps"], 0)
    _check_int("seed", c["seed"], 0)
    for name in ("batch_size", "steps", "log_every", "eval_every", "eval_size",
                 "eval_batch_size", "checkpoint_every", "keep_checkpoints"):  # fmt: skip
        _check_int(name, c[name], 1)
    _check_eval_passes(c["eval_passes"])
    _check_data_parallel(c["data_parallel"], c["batch_size"])
    return RunSpec(task=task, model_config=model_config, schedule=schedule, window=window)


def import_rule_module(name: str | None) -> None:
    """Imports `name` (e.g. "examples.custom_rule") so that the rule it registers can be
    used by name; None does nothing.

    Raises:
      ValueError: `name` is not a string or cannot be imported.
    """
    if name is None:
        return
    if not isinstance(name, str) or not name:
        raise ValueError(f"rule_module must be a module name (str) or None, got {name!r}")
    try:
        importlib.import_module(name)
    except ImportError as e:
        raise ValueError(f"rule_module {name!r} could not be imported: {e}") from e


def _check_estimator(c):
    name, k = c["estimator"], c["grad_passes"]
    if name not in estimators.ESTIMATORS:
        raise ValueError(f"estimator must be one of {estimators.ESTIMATORS}, got {name!r}")
    if name == "full" and k is not None:
        raise ValueError(
            f"grad_passes={k} truncates the gradient but estimator is 'full': set "
            "estimator='truncated' (or 'es', where it truncates the non-theta backprop)"
        )
    if name == "truncated" and k is None:
        raise ValueError("estimator 'truncated' needs grad_passes (the passes to backprop)")
    _check_int("es_pairs", c["es_pairs"], 1)
    _check_float("es_sigma", c["es_sigma"], 0.0, lo_open=True)
    if c["es_scope"] not in estimators.ES_SCOPES:
        raise ValueError(f"es_scope must be one of {estimators.ES_SCOPES}, got {c['es_scope']!r}")
    if name == "es" and c["es_scope"] == "all" and k is not None:
        raise ValueError("es_scope='all' uses no backprop; grad_passes must be None")


def _check_eval_passes(value):
    if not isinstance(value, list | tuple):
        raise ValueError(f"eval_passes must be a list of ints >= 1, got {value!r}")
    for m in value:
        _check_int("each of eval_passes", m, 1)


def _check_data_parallel(value, batch_size):
    # True: every device (counted when the run starts); an int n: the first n devices.
    if value is True or value is False:
        return
    _check_int("data_parallel (True/False or a device count)", value, 1)
    if batch_size % value:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by data_parallel={value} devices"
        )


def optimizer_from_config(config) -> optax.GradientTransformation:
    c = _to_dict(config)
    return make_optimizer(
        c["optimizer"], learning_rate=c["learning_rate"],
        adam_learning_rate=c["adam_learning_rate"],
        theta_learning_rate=c["theta_learning_rate"], lr_schedule=c["lr_schedule"],
        warmup_steps=c["warmup_steps"], total_steps=c["steps"],
        min_lr_ratio=c["min_lr_ratio"], clip_norm=c["clip_norm"],
        weight_decay=c["weight_decay"],
    )  # fmt: skip


def train_step_from_config(c: dict[str, Any], spec: RunSpec, tx, mesh=None):
    """`make_train_step` with every option read from a resolved config dict `c`."""
    return make_train_step(
        tx, window=spec.window, passes=c["passes"], schedule=spec.schedule, remat=c["remat"],
        grad_passes=c["grad_passes"], estimator=c["estimator"], es_pairs=c["es_pairs"],
        es_sigma=c["es_sigma"], es_scope=c["es_scope"], seed=c["seed"], mesh=mesh,
    )  # fmt: skip


def _jsonable(x):
    return json.loads(json.dumps(x))


def run_record(config, spec: RunSpec) -> dict[str, Any]:
    """What `config.json` holds: the requested config and what it resolved to."""
    task = {"name": spec.task.name, **dataclasses.asdict(spec.task)}
    return _jsonable(
        {
            "config": _to_dict(config),
            "model_config": dataclasses.asdict(spec.model_config),
            "task": task,
            "window": spec.window,
            "seq_len": spec.task.seq_len,
        }
    )


def _identity(record) -> dict[str, Any]:
    # Everything that fixes the shape of the checkpoint or the meaning of the data.
    return {
        **{f"model.{k}": v for k, v in record["model_config"].items()},
        **{f"task.{k}": v for k, v in record["task"].items()},
        "optimizer": record["config"]["optimizer"],
    }


def check_workdir(workdir: str, record: dict[str, Any]) -> None:
    """Refuses a workdir whose saved run has a different model, vocab, task or optimizer.

    Raises:
      ConfigConflictError: naming each differing field with its saved and requested value.
    """
    saved = checkpointing.read_run_config(workdir)
    if saved is None:
        return
    old, new = _identity(saved), _identity(record)
    diffs = [f"{k}: saved {old.get(k)!r}, requested {new.get(k)!r}"
             for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]  # fmt: skip
    if diffs:
        raise ConfigConflictError(
            f"workdir {workdir} holds a run with a different model/task/optimizer ("
            + "; ".join(diffs)
            + "). Use a new --workdir, or delete this one to start over."
        )
    changed = {k: (saved["config"].get(k), v) for k, v in record["config"].items()
               if saved["config"].get(k) != v}  # fmt: skip
    if changed:
        logging.info("continuing %s with changed fields (saved -> now): %s", workdir, changed)


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _truncate_metrics(path: str, last_step: int) -> None:
    """Drops lines logged after the restored checkpoint (they will be logged again)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= last_step]
    with open(path + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)


def theta_record(params: Params, step: int) -> dict[str, Any]:
    """One `theta.jsonl` line: `parametric.describe_theta` of every ssm layer's theta
    (coefficients per head, the nearest built-in point of the head mean and its distance)."""
    layers = []
    for i in params.config.ssm_blocks:
        d = parametric.describe_theta(jax.device_get(params.blocks[i]["mixer"]["theta"]))
        layers.append({"block": i, **{k: d[k] for k in ("coefficients", "nearest", "distance")}})
    return {"step": int(step), "layers": layers}


def _finite_or_none(x: float):
    return x if math.isfinite(x) else None


def _eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains and evaluates one config, resuming from `workdir` if it holds a checkpoint.

    Writes `config.json`, `metrics.jsonl` (one object per logged step: `step`, `loss`
    (mean since the last line), `grad_norm`, `token_acc`, `lr`, `tokens_per_s`,
    `elapsed_s`, and `eval/...` per depth at eval steps, plus `eval_N{M}/...` for each M
    in `eval_passes`), checkpoints and `summary.json` (its `eval` dict: the last eval, keys
    without the `eval/` prefix, `N{M}/...` for eval_passes). With rule="parametric" it
    also writes `theta.jsonl` (`theta_record`: every ssm layer's coefficients and nearest
    built-in rule) at step 0 and at every eval step.

    `config.data_parallel` (True: all devices; n: the first n) trains data-parallel over a
    mesh (`sharding.py`). In a multi-process run (`sharding.maybe_initialize_distributed`)
    every process calls this; only process 0 writes config, metrics and summary (Orbax
    coordinates the checkpoint across processes).

    Returns:
      the summary dict.

    Raises:
      ValueError: an invalid config (before anything is compiled).
      ConfigConflictError: `workdir` holds a run of a different model/task/optimizer.
      NonFiniteError: NaN/Inf loss or grad norm; the bad state is not checkpointed.
    """
    t0 = time.time()
    spec = resolve_config(config)
    c = _to_dict(config)
    task = spec.task
    workdir = os.fspath(workdir)
    mesh = sharding.mesh_from_config(c["data_parallel"])
    if mesh is not None:
        sharding.check_batch_size(c["batch_size"], mesh)
    main = sharding.is_main_process()
    os.makedirs(workdir, exist_ok=True)
    record = run_record(config, spec)
    check_workdir(workdir, record)
    if main:
        _write_json(os.path.join(workdir, checkpointing.CONFIG_FILE), record)

    tx = optimizer_from_config(c)
    lr_fn = learning_rate_schedule(
        c["learning_rate"], kind=c["lr_schedule"], warmup_steps=c["warmup_steps"],
        total_steps=c["steps"], min_lr_ratio=c["min_lr_ratio"],
    )  # fmt: skip
    train_step = train_step_from_config(c, spec, tx, mesh=mesh)
    if mesh is None:
        # Committed to the device like a restored state, so that a fresh and a resumed
        # run lower to the same program (and share XLA's compilation cache).
        state_sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        place_state = functools.partial(jax.device_put, device=state_sharding)
        place_batch = lambda b: b
    else:
        state_sharding = sharding.replicated(mesh)
        place_state = functools.partial(sharding.replicate, mesh=mesh)
        place_batch = functools.partial(sharding.shard_batch, mesh=mesh)

    def init_fn():
        return init_train_state(init_params(spec.model_config, jax.random.key(c["seed"])), tx)

    metrics_path = os.path.join(workdir, METRICS_FILE)
    log_theta = main and spec.model_config.rule == parametric.NAME
    theta_path = os.path.join(workdir, THETA_FILE)

    def write_theta(params, step):
        with open(theta_path, "a") as f:
            f.write(json.dumps(theta_record(params, step)) + "\n")

    steps, tokens_per_step = c["steps"], c["batch_size"] * task.seq_len
    summary: dict[str, Any] = {"status": "running", "steps": steps}
    with checkpointing.Checkpointer(workdir, max_to_keep=c["keep_checkpoints"]) as ckpt:
        abstract = sharding.abstract_with_sharding(jax.eval_shape(init_fn), state_sharding)
        state = ckpt.restore(abstract)
        if state is None:
            state, start = place_state(init_fn()), 0
        else:
            start = int(state.step)
            logging.info("resuming %s from step %d", workdir, start)
        summary["resumed_from"] = start if start else None
        if main:
            _truncate_metrics(metrics_path, start)
        if log_theta:  # step 0 (the init) is logged by a fresh start only
            _truncate_metrics(theta_path, start if start else -1)
            if not start:
                write_theta(state.params, 0)
        eval_batch = task.eval_batch(c["seed"], c["eval_size"])

        def evaluate_now(params) -> dict[str, dict[str, float | None]]:
            """{"eval": metrics at the training N, "eval_N{M}": at N=M for eval_passes}."""
            by_n: dict[int, dict[str, float | None]] = {}
            for m in (c["passes"], *c["eval_passes"]):
                if m not in by_n:
                    ev = evaluate(
                        params, task, eval_batch, window=spec.window, passes=m,
                        schedule=spec.schedule, batch_size=c["eval_batch_size"], mesh=mesh,
                    )  # fmt: skip
                    by_n[m] = {k: _finite_or_none(v) for k, v in ev.items()}
            return {"eval": by_n[c["passes"]], **{f"eval_N{m}": by_n[m] for m in c["eval_passes"]}}

        def summary_eval(evals) -> dict[str, float | None]:
            # summary["eval"] keys drop "eval/" (as before); eval_N{M}/k becomes N{M}/k.
            return {(k if p == "eval" else f"{p[len('eval_'):]}/{k}"): v
                    for p, ev in evals.items() for k, v in ev.items()}  # fmt: skip

        logging.info(
            "training %s: %d params, steps %d..%d, batch %d x %d tokens, %s",
            task.name, sum(x.size for x in jax.tree_util.tree_leaves(state.params)),
            start, steps, c["batch_size"], task.seq_len,
            "1 device" if mesh is None else f"data-parallel over {mesh.devices.size} devices "
            f"({jax.process_count()} process(es))",
        )  # fmt: skip

        window_sums: dict[str, float] = {}
        n_window = 0
        pending = None  # (step, device metrics), fetched one step late
        # Throughput excludes startup (incl. the first step: compilation) and eval/save.
        t_mark, mark_step, timed_steps, train_time, startup_s = None, start, 0, 0.0, None

        def consume():
            nonlocal pending, n_window
            step, m = pending
            pending = None
            m = jax.device_get(m)
            check_finite(step, m)
            for k, v in m.items():
                window_sums[k] = window_sums.get(k, 0.0) + float(v)
            n_window += 1

        try:
            for i in range(start, steps):
                step = i + 1
                batch = place_batch(task.batch(c["seed"], i, c["batch_size"]))
                state, metrics = train_step(state, batch)
                if pending is not None:
                    consume()
                pending = (step, metrics)
                if t_mark is None:
                    consume()
                    startup_s, t_mark, mark_step = time.time() - t0, time.time(), step
                is_eval = step % c["eval_every"] == 0 or step == steps
                is_ckpt = step % c["checkpoint_every"] == 0 or step == steps
                if not (is_eval or is_ckpt or step % c["log_every"] == 0):
                    continue
                if pending is not None:  # every step up to here is checked before saving
                    consume()
                now = time.time()
                n_timed = step - mark_step
                train_time, timed_steps = train_time + now - t_mark, timed_steps + n_timed
                rate = n_timed * tokens_per_step / (now - t_mark) if n_timed else None
                line = {k: v / n_window for k, v in window_sums.items()}
                line.update(step=step, lr=float(lr_fn(i)), tokens_per_s=rate,
                            elapsed_s=now - t0)  # fmt: skip
                window_sums, n_window = {}, 0
                eta = train_time / max(timed_steps, 1) * (steps - step)
                logging.info(
                    "step %d/%d  loss %.4f  grad_norm %.3g  tokens/s %s  ETA %s",
                    step, steps, line["loss"], line["grad_norm"],
                    "-" if rate is None else f"{rate:.0f}", _eta(eta),
                )  # fmt: skip
                if is_eval:
                    evals = evaluate_now(state.params)
                    line.update({f"{p}/{k}": v for p, ev in evals.items() for k, v in ev.items()})
                    summary["eval"] = summary_eval(evals)
                    if log_theta:
                        write_theta(state.params, step)
                    logging.info("eval step %d: %s", step, "  ".join(
                        f"{k} {v:.4f}" for k, v in summary["eval"].items() if v is not None
                    ))  # fmt: skip
                if main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(line) + "\n")
                summary["final_loss"] = line["loss"]
                if is_ckpt:
                    ckpt.save(state)
                t_mark, mark_step = time.time(), step
            if start >= steps:
                logging.info("%s is already trained to step %d (steps=%d)", workdir, start, steps)
                summary["eval"] = summary_eval(evaluate_now(state.params))
            summary.update(status="completed", step=int(jax.device_get(state.step)))
        except NonFiniteError as e:
            summary.update(status="failed", error=str(e), failed_step=e.step)
            logging.error("%s", e)
            raise
        except BaseException as e:
            summary.update(status="interrupted", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            summary.update(
                last_checkpoint=ckpt.latest_step(),
                startup_s=startup_s,
                train_s=train_time,
                tokens_per_s=timed_steps * tokens_per_step / train_time if train_time else None,
                wall_s=time.time() - t0,
            )
            if main:
                _write_json(os.path.join(workdir, SUMMARY_FILE), summary)
    return summary
