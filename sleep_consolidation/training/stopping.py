"""When a run has learned what it can: the stopping rule and the learning-speed outcome.

    rule = StopRule(metric="eval/acc", patience=4, min_delta=0.005, min_steps=2000)
    rule.decide([(500, 0.1), (1000, 0.6), ...])   # True: stop (converged)
    steps_to_fraction(history, 0.9)               # first step at 90% of the final value

A run with a rule stops at the first eval where the metric has not improved by more than
`min_delta` over its best before the last `patience` evals; `steps` stays the cap. The
decision is a pure function of the eval history, which `metrics.jsonl` holds, so a resumed
run recomputes it exactly from the lines up to its checkpoint. Pure host code: no JAX.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DEFAULT_METRIC = "eval/acc"
# The fixed fraction of the final metric whose first step `steps_to_90pct` records.
FRACTION = 0.9
CONVERGED, STEP_CAP = "converged", "step_cap"
# A metrics.jsonl eval key: eval/acc, eval/loss/d=16, eval_N4/acc, ...
_KEY = re.compile(r"^eval(?:_N(\d+))?/(acc|loss)(?:/d=(\d+))?$")


def metric_mode(metric: str) -> str:
    """The direction of `metric`: "min" for a loss, "max" otherwise (accuracy)."""
    return "min" if "loss" in metric.split("/") else "max"


def check_metric(metric: str, depths: Sequence[int], eval_passes: Sequence[int]) -> None:
    """Raises ValueError unless `metric` is a key the run's evals log.

    Args:
      metric: e.g. "eval/acc", "eval/loss/d=8", "eval_N4/acc".
      depths: the task's depths (`task.depths`); eval_passes: the run's extra eval N's.
    """
    m = _KEY.match(metric) if isinstance(metric, str) else None
    ok = m is not None
    if ok and m.group(1) is not None:
        ok = int(m.group(1)) in tuple(eval_passes)
    if ok and m.group(3) is not None:
        ok = int(m.group(3)) in tuple(depths)
    if not ok:
        raise ValueError(
            f"stop_metric must be an eval key of this run: eval/acc, eval/loss, "
            f"eval/acc/d=<depth> (depths {tuple(depths)}) or eval_N<M>/... (M in "
            f"eval_passes {tuple(eval_passes)}); got {metric!r}"
        )


def _score(value, mode: str) -> float:
    # Larger is better; a missing (NaN) eval never counts as an improvement.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -math.inf
    return float(value) if mode == "max" else -float(value)


def plateaued(values: Sequence[float | None], patience: int, min_delta: float, mode="max") -> bool:
    """The stopping decision on a sequence of evals (oldest first).

    Args:
      values: the metric at each eval so far (None/NaN: a failed eval).
      patience: k, the evals that must bring no improvement.
      min_delta: δ, the least gain over the earlier best that counts as improvement.
      mode: "max" (accuracy) or "min" (loss).

    Returns:
      True iff there are more than k evals and the best of the last k is not better than
      the best before them by more than δ.
    """
    if len(values) <= patience:
        return False
    scores = [_score(v, mode) for v in values]
    before, recent = max(scores[:-patience]), max(scores[-patience:])
    if recent == -math.inf:  # the last k evals all failed: nothing to judge by
        return False
    return not recent > before + min_delta


@dataclasses.dataclass(frozen=True)
class StopRule:
    """Stop when `metric` has plateaued (`plateaued`), not before step `min_steps`, and
    only once its best value has reached `min_value` (at least it for "max" metrics, at
    most it for "min"; None: no such floor).

    Both exist because these runs sit on a loss plateau near chance before they learn,
    for a number of steps that varies by seed and N: without them a run still on the
    plateau would stop there and be called converged (measured: recall n=16, N=4 seed 2
    "converged" at step 2250 with acc 0.088 under min_steps alone; BUILD_NOTES.md,
    "main_converged ... measured").
    A run that never reaches `min_value` trains to the cap and is flagged unconverged.
    """

    metric: str = DEFAULT_METRIC
    patience: int = 4
    min_delta: float = 0.0
    min_steps: int = 0
    min_value: float | None = None

    @property
    def mode(self) -> str:
        return metric_mode(self.metric)

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> StopRule | None:
        """The rule of a run config (`stop_*` fields); None when `stop_patience` is None."""
        if c.get("stop_patience") is None:
            return None
        return cls(
            metric=c.get("stop_metric") or DEFAULT_METRIC,
            patience=int(c["stop_patience"]),
            min_delta=float(c.get("stop_min_delta") or 0.0),
            min_steps=int(c.get("stop_min_steps") or 0),
            min_value=None if c.get("stop_min_value") is None else float(c["stop_min_value"]),
        )

    def decide(self, history: Sequence[tuple[int, float | None]]) -> bool:
        """True: stop at the last eval of `history` ([(step, value)], oldest first)."""
        if not history or history[-1][0] < self.min_steps:
            return False
        if self.min_value is not None:
            best = max(_score(v, self.mode) for _, v in history)
            if best < _score(self.min_value, self.mode):
                return False  # still on the plateau: not converged, whatever its slope
        return plateaued([v for _, v in history], self.patience, self.min_delta, self.mode)


def eval_history(
    lines: Iterable[Mapping[str, Any]], metric: str, upto: int | None = None
) -> list[tuple[int, float | None]]:
    """[(step, value)] of `metric` from metrics.jsonl lines (those that hold it), in step
    order, only steps <= `upto` when given (a resumed run's checkpoint)."""
    out = {}
    for ln in lines:
        if metric in ln and "step" in ln and (upto is None or ln["step"] <= upto):
            out[int(ln["step"])] = ln[metric]  # a line logged again after a resume wins
    return sorted(out.items())


def steps_to_fraction(
    history: Sequence[tuple[int, float | None]], fraction: float = FRACTION, mode: str = "max"
) -> int | None:
    """The first eval step at which the metric reached `fraction` of its final value.

    For "max" (accuracy): the first v >= fraction * final; for "min" (loss): the first
    v <= final / fraction. None if the history is empty or its final value is missing.
    """
    if not history or _score(history[-1][1], mode) == -math.inf:
        return None
    final = float(history[-1][1])
    target = fraction * final if mode == "max" else final / fraction
    for step, v in history:
        if _score(v, mode) == -math.inf:
            continue
        if (v >= target) if mode == "max" else (v <= target):
            return int(step)
    return int(history[-1][0])


def summary_fields(history, reason: str, metric: str, step: int) -> dict:
    """The convergence fields of a run's summary.json: `stopped_at`, `stop_reason`,
    `converged`, `stop_metric` and `steps_to_90pct` (`steps_to_fraction` of `history`)."""
    return dict(
        stopped_at=step, stop_reason=reason, converged=reason == CONVERGED, stop_metric=metric,
        steps_to_90pct=steps_to_fraction(history, FRACTION, metric_mode(metric)),
    )  # fmt: skip


__all__ = [
    "CONVERGED",
    "DEFAULT_METRIC",
    "FRACTION",
    "STEP_CAP",
    "StopRule",
    "check_metric",
    "eval_history",
    "metric_mode",
    "plateaued",
    "steps_to_fraction",
    "summary_fields",
]
