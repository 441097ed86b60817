"""Run-config validation: every field a run reads, checked on the host before anything is
compiled, and resolved into the objects the run needs (`RunSpec`).

A run config is a flat `ml_collections.ConfigDict` (or mapping) with exactly the fields of
`CONFIG_FIELDS`; `experiments/configs/common.py` sets them all.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from sleep_consolidation import estimators, stopping
from sleep_consolidation.config import (
    ModelConfig,
    Schedule,
    check_grad_passes,
    check_window_and_passes,
)
from sleep_consolidation.optimizers import LR_SCHEDULES, OPTIMIZERS
from sleep_consolidation.sequence import REMAT_MODES
from sleep_consolidation.tasks import Task, make_task

# ModelConfig fields a config sets directly (vocab_size comes from the task).
MODEL_FIELDS = (
    "d_model", "num_heads", "layout", "rule", "head_dim", "mlp_ratio", "conv_size",
    "rope_base", "impl", "chunk_size", "compute_dtype",
)  # fmt: skip
SCHEDULE_FIELDS = ("eviction", "reset_between_passes", "reinject_embedding", "loop_blocks")
OPTIMIZER_FIELDS = (
    "optimizer", "learning_rate", "adam_learning_rate", "theta_learning_rate", "lr_schedule",
    "warmup_steps", "min_lr_ratio", "clip_norm", "weight_decay",
)  # fmt: skip
# Meta-gradient estimator (estimators.py) and the module that registers a custom rule.
ESTIMATOR_FIELDS = ("estimator", "es_pairs", "es_sigma", "es_scope")
CONFIG_FIELDS_EXTRA = ("rule_module",)
# The stopping rule (stopping.py); stop_patience=None (the default) turns it off, so a
# run trains to `steps`. None in the others means: eval/acc, δ = 0, no least step.
STOP_FIELDS = (
    "stop_metric", "stop_patience", "stop_min_delta", "stop_min_steps", "stop_min_value"
)  # fmt: skip
LOOP_FIELDS = (
    "window", "passes", "grad_passes", "remat", "batch_size", "steps", "seed", "log_every",
    "eval_every", "eval_size", "eval_batch_size", "checkpoint_every", "keep_checkpoints",
    "eval_passes", "data_parallel", "microbatches",
)  # fmt: skip
CONFIG_FIELDS = (
    "task", *MODEL_FIELDS, *SCHEDULE_FIELDS, *OPTIMIZER_FIELDS, *LOOP_FIELDS,
    *ESTIMATOR_FIELDS, *CONFIG_FIELDS_EXTRA, *STOP_FIELDS,
)  # fmt: skip


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


def config_to_dict(config) -> dict[str, Any]:
    """A ConfigDict (or any mapping) as a plain dict."""
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def resolve_config(config) -> RunSpec:
    """Validates a run config (a ConfigDict or a mapping) and builds its objects.

    Raises:
      ValueError: "invalid config: ..." for unknown or missing fields, an unknown task /
        task knob / rule / block kind, or an out-of-range value (the message names the
        field). Nothing is compiled.
    """
    try:
        return _resolve_config(config_to_dict(config))
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
    _check_int("microbatches", c["microbatches"], 1)
    _check_stop(c, task)
    if c["batch_size"] % c["microbatches"]:
        raise ValueError(
            f"batch_size {c['batch_size']} is not divisible by microbatches={c['microbatches']}"
        )
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
    estimators.check_estimator_options(c["estimator"], c["grad_passes"])
    _check_int("es_pairs", c["es_pairs"], 1)
    _check_float("es_sigma", c["es_sigma"], 0.0, lo_open=True)
    if c["es_scope"] not in estimators.ES_SCOPES:
        raise ValueError(f"es_scope must be one of {estimators.ES_SCOPES}, got {c['es_scope']!r}")
    if c["estimator"] == "es" and c["es_scope"] == "all" and c["grad_passes"] is not None:
        raise ValueError("es_scope='all' uses no backprop; grad_passes must be None")


def _check_stop(c, task):
    _check_optional_int("stop_patience", c["stop_patience"], 1)
    _check_optional_int("stop_min_steps", c["stop_min_steps"], 0)
    if c.get("stop_min_value") is not None:
        _check_float("stop_min_value", c["stop_min_value"], -math.inf)
    if c["stop_min_delta"] is not None:
        _check_float("stop_min_delta", c["stop_min_delta"], 0.0)
    if c["stop_metric"] is not None:
        stopping.check_metric(c["stop_metric"], task.depths, c["eval_passes"])


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
