"""Run-config validation: every field a run reads, checked on the host before anything is
compiled, and resolved into the objects the run needs (`RunSpec`).

A run config is a flat `ml_collections.ConfigDict` (or mapping) with exactly the fields of
`CONFIG_FIELDS`; `experiments/configs/common.py` sets them all.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from sleep_consolidation.config import (
    ModelConfig,
    Schedule,
    check_loop,
    check_sleep_reaches,
)
from sleep_consolidation.tasks import Task, make_task
from sleep_consolidation.training import curriculum, estimators, stopping
from sleep_consolidation.training.optimizers import LR_SCHEDULES, OPTIMIZERS

# ModelConfig fields a config sets directly (vocab_size comes from the task).
MODEL_FIELDS = (
    "d_model", "num_heads", "layout", "rule", "head_dim", "mlp_ratio", "conv_size",
    "rope_base", "impl", "chunk_size", "compute_dtype",
)  # fmt: skip
SCHEDULE_FIELDS = (
    "eviction", "reset_between_passes", "reinject_embedding", "loop_blocks",
    "normalize_sleep_input", "wake_passes",
)  # fmt: skip
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
# Training many passes (all off by default): start from another run's final parameters
# (`init_from`: its workdir), ramp N up from 1 over the first `passes_ramp_steps` steps
# (curriculum.py), train the first `hard_eviction_steps` steps of a sliding-eviction run
# with hard eviction (curriculum.eviction_at), and log per-pass norms and recall on
# `pass_stats_size` eval examples at every eval (diagnostics.per_pass_statistics).
RECIPE_FIELDS = ("init_from", "passes_ramp_steps", "hard_eviction_steps", "pass_stats_size")
CONFIG_FIELDS = (
    "task", *MODEL_FIELDS, *SCHEDULE_FIELDS, *OPTIMIZER_FIELDS, *LOOP_FIELDS,
    *ESTIMATOR_FIELDS, *CONFIG_FIELDS_EXTRA, *STOP_FIELDS, *RECIPE_FIELDS,
)  # fmt: skip
# Fields a config written before they existed may lack; missing means this default (off).
OPTIONAL_FIELDS = {
    "init_from": None, "passes_ramp_steps": None, "pass_stats_size": None,
    "normalize_sleep_input": False, "hard_eviction_steps": None, "wake_passes": 1,
}  # fmt: skip


# Far past any rate that trains (Muon's default is 2e-3, AdamW's 3e-4); above it a rate
# is a typo (1e39 is Inf in float32) and only produces non-finite parameters.
MAX_LEARNING_RATE = 1e3


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The objects a validated config resolves to."""

    task: Task
    model_config: ModelConfig
    schedule: Schedule
    window: int


def check_int(name, value, minimum):
    """Raises ValueError naming `name` unless `value` is an int (or numpy int) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_optional_int(name, value, minimum):
    if value is not None:
        check_int(name, value, minimum)


def _check_float(name, value, lo, hi=math.inf, lo_open=False):
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and value <= hi and (value > lo if lo_open else value >= lo)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi == math.inf else ']'}"
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")


# Task knobs added after runs were recorded, per task: missing means this default, which
# generates the same data the task did before the knob existed.
OPTIONAL_TASK_KNOBS = {"rule110": {"probe_radius": 0}}


def with_optional_task_knobs(task: dict[str, Any]) -> dict[str, Any]:
    """A task's knobs (config["task"], or config.json's resolved "task") with the optional
    knobs it lacks set to their defaults (`OPTIONAL_TASK_KNOBS`)."""
    return {**OPTIONAL_TASK_KNOBS.get(task.get("name"), {}), **task}


def config_to_dict(config) -> dict[str, Any]:
    """A ConfigDict (or any mapping) as a plain dict, with the optional fields and task
    knobs it lacks set to their defaults (`OPTIONAL_FIELDS`, `OPTIONAL_TASK_KNOBS`)."""
    c = {**OPTIONAL_FIELDS, **(config.to_dict() if hasattr(config, "to_dict") else dict(config))}
    if isinstance(c.get("task"), dict):
        c["task"] = with_optional_task_knobs(c["task"])
    return c


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
    check_loop(
        window, c["passes"], remat=c["remat"], grad_passes=c["grad_passes"], schedule=schedule
    )
    check_sleep_reaches(window, task.seq_len, task.answer_positions)
    if c["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"config.optimizer must be one of {OPTIMIZERS}, got {c['optimizer']!r}")
    if c["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(
            f"config.lr_schedule must be one of {LR_SCHEDULES}, got {c['lr_schedule']!r}"
        )
    _check_float("learning_rate", c["learning_rate"], 0.0, MAX_LEARNING_RATE, lo_open=True)
    _check_float("adam_learning_rate", c["adam_learning_rate"], 0.0, MAX_LEARNING_RATE,
                 lo_open=True)  # fmt: skip
    if c["theta_learning_rate"] is not None:
        _check_float("theta_learning_rate", c["theta_learning_rate"], 0.0, MAX_LEARNING_RATE,
                     lo_open=True)  # fmt: skip
    _check_estimator(c)
    _check_float("min_lr_ratio", c["min_lr_ratio"], 0.0, 1.0)
    _check_float("clip_norm", c["clip_norm"], 0.0)
    _check_float("weight_decay", c["weight_decay"], 0.0)
    check_int("warmup_steps", c["warmup_steps"], 0)
    check_int("seed", c["seed"], 0)
    for name in ("batch_size", "steps", "log_every", "eval_every", "eval_size",
                 "eval_batch_size", "checkpoint_every", "keep_checkpoints"):  # fmt: skip
        check_int(name, c[name], 1)
    _check_eval_passes(c["eval_passes"])
    if schedule.wake_passes > 1 and any(m > 1 for m in c["eval_passes"]):
        raise ValueError(
            f"wake_passes={schedule.wake_passes} (online depth) runs with passes=1 only; "
            f"eval_passes={list(c['eval_passes'])} asks for more"
        )
    _check_data_parallel(c["data_parallel"], c["batch_size"])
    check_int("microbatches", c["microbatches"], 1)
    _check_stop(c, task)
    _check_recipe(c)
    if c["batch_size"] % c["microbatches"]:
        raise ValueError(
            f"batch_size {c['batch_size']} is not divisible by microbatches={c['microbatches']}"
        )
    check_memory(c, task, model_config)
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
    check_int("es_pairs", c["es_pairs"], 1)
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


def _check_recipe(c):
    if c["init_from"] is not None and (not isinstance(c["init_from"], str) or not c["init_from"]):
        raise ValueError(f"init_from must be a run's workdir (str) or None, got {c['init_from']!r}")
    curriculum.check_ramp_steps(c["passes_ramp_steps"])
    if c["passes_ramp_steps"] and c["grad_passes"] is not None:
        # Truncation to the last k passes is undefined while the ramp's N is below k.
        raise ValueError("passes_ramp_steps cannot be combined with grad_passes (truncation)")
    curriculum.check_hard_eviction_steps(c["hard_eviction_steps"], c["eviction"])
    if c["pass_stats_size"] is not None:
        check_int("pass_stats_size", c["pass_stats_size"], 1)
        if c["pass_stats_size"] > c["eval_size"]:
            raise ValueError(
                f"pass_stats_size={c['pass_stats_size']} exceeds eval_size={c['eval_size']} "
                "(the statistics are computed on the first eval examples)"
            )


def _check_eval_passes(value):
    if not isinstance(value, list | tuple):
        raise ValueError(f"eval_passes must be a list of ints >= 1, got {value!r}")
    for m in value:
        check_int("each of eval_passes", m, 1)


def _check_data_parallel(value, batch_size):
    # True: every device (counted when the run starts); an int n: the first n devices.
    if value is True or value is False:
        return
    check_int("data_parallel (True/False or a device count)", value, 1)
    if batch_size % value:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by data_parallel={value} devices"
        )


def host_memory_bytes() -> int | None:
    """The machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_lower_bounds(c: dict[str, Any], task: Task, model_config: ModelConfig) -> dict:
    """Bytes a run needs at least, per field that sets the size: {field: bytes}.

    Lower bounds, so that a refusal is certain: `batch_size`, the batch on the host (5
    int32/float32 arrays of [B, T]) plus the residual stream of every block of one
    microbatch, kept for the backward pass (float32 [B/microbatches, T, d_model]);
    `eval_size`, the eval set on the host, held twice while it is built (its chunks and
    their concatenation); `eval_batch_size`, the residual stream of one eval forward. The
    real peak is several times larger (MLP, attention, sleep passes).
    """
    T, d, blocks = task.seq_len, model_config.d_model, len(model_config.layout)
    micro = -(-c["batch_size"] // c["microbatches"])
    return {
        "batch_size": 20 * c["batch_size"] * T + 4 * micro * T * d * blocks,
        "eval_size": 2 * 20 * c["eval_size"] * T,
        "eval_batch_size": 4 * min(c["eval_batch_size"], c["eval_size"]) * T * d,
    }


def check_memory(c: dict[str, Any], task: Task, model_config: ModelConfig, limit=None) -> None:
    """Refuses sizes whose memory is known to exceed the machine (`memory_lower_bounds`
    against `limit`, default the host's physical memory), before anything is allocated:
    otherwise the process is killed for memory with no message."""
    limit = host_memory_bytes() if limit is None else limit
    if not limit:
        return
    for field, need in memory_lower_bounds(c, task, model_config).items():
        if need > limit:
            raise ValueError(
                f"{field}={c[field]} needs at least {need / 2**30:.1f} GiB (sequence length "
                f"{task.seq_len}, d_model {model_config.d_model}), more than this machine's "
                f"{limit / 2**30:.1f} GiB of memory"
            )
