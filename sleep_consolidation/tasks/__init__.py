"""Deterministic, vectorised synthetic task generators.

    task = make_task("rule110", t_values=(4, 8))
    batch = task.batch(seed=0, step=17, batch_size=512)      # numpy Batch
    metrics = per_depth_metrics(logits, batch, task.depths)  # jax scalars

Formats and choices are documented in BUILD_NOTES.md ("Tasks") and in each task module.
"""

from __future__ import annotations

import dataclasses

from sleep_consolidation.tasks.base import (
    Batch,
    Task,
    metrics_from_sums,
    per_depth_metrics,
    per_depth_sums,
)
from sleep_consolidation.tasks.depo import Depo
from sleep_consolidation.tasks.gsm import GSM
from sleep_consolidation.tasks.recall import Recall
from sleep_consolidation.tasks.rule110 import Rule110, rule110_step

_REGISTRY: dict[str, type[Task]] = {cls.name: cls for cls in (Rule110, Depo, GSM, Recall)}
TASKS: tuple[str, ...] = tuple(_REGISTRY)


def make_task(name: str, **knobs) -> Task:
    """Builds the task `name` with the given knobs (the rest keep their paper defaults).

    Raises:
      ValueError: unknown task name (the message lists the known ones), unknown knob (the
        message names it and lists the valid ones), or an invalid knob value.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    cls = _REGISTRY[name]
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(knobs) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown knob(s) {', '.join(map(repr, unknown))} for task {name!r}; "
            f"valid knobs: {', '.join(fields)}"
        )
    return cls(**knobs)


__all__ = [
    "Batch",
    "Depo",
    "GSM",
    "Recall",
    "Rule110",
    "TASKS",
    "Task",
    "make_task",
    "metrics_from_sums",
    "per_depth_metrics",
    "per_depth_sums",
    "rule110_step",
]
