"""A curriculum over the number of passes: N grows from 1 to its target during training.

Looped models train badly from scratch at their full loop count; ramping the count up over
the first part of training is the published remedy (method notes, "Training many passes").
N is static under jit (it sets the shape of the unrolled computation), so a run compiles
one train step per distinct N it uses; N at step i is a pure function of i, so a resumed
run uses the same N at every step as an uninterrupted one.

    n = passes_at(i, passes=4, ramp_steps=3000)   # 1 for i < 1000, 2 until 2000, ...

The same holds for a warm-up over the eviction mode: under sliding eviction the paper
trains N > 1 first with hard eviction ("crucial"); `eviction_at` says which mode step i
uses, and the run compiles one step per (N, eviction) it meets.
"""

from __future__ import annotations


def _check_optional_steps(name: str, value, meaning: str) -> None:
    """`value` is None or an int >= 0 (not a bool); the error names the field."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be None or an int >= 0 ({meaning}), got {value!r}")


def check_ramp_steps(ramp_steps) -> None:
    """`ramp_steps` is None (no curriculum) or an int >= 0 (0: no curriculum either)."""
    _check_optional_steps(
        "passes_ramp_steps", ramp_steps, "steps over which N grows from 1 to passes"
    )


def passes_at(step: int, passes: int, ramp_steps: int | None) -> int:
    """The number of passes of the optimizer update with 0-based index `step`.

    Linear in N: the first `ramp_steps` updates are split into `passes - 1` equal stages
    at N = 1, 2, ..., passes - 1, and every update from `ramp_steps` on uses `passes`
    (passes=4, ramp_steps=3000: N=1 for steps 0-999, 2 for 1000-1999, 3 for 2000-2999,
    then 4). Without a ramp (None or 0), or at passes=1, it is always `passes`.
    """
    if not ramp_steps or passes == 1 or step >= ramp_steps:
        return passes
    return 1 + (passes - 1) * step // ramp_steps


def passes_used(steps: int, passes: int, ramp_steps: int | None) -> tuple[int, ...]:
    """The distinct N that updates 0..steps-1 use, ascending."""
    last = min(steps, (ramp_steps or 0) + 1)  # N is constant from ramp_steps on
    return tuple(sorted({passes_at(i, passes, ramp_steps) for i in range(max(last, 1))}))


def check_hard_eviction_steps(hard_steps, eviction: str) -> None:
    """`hard_steps` is None (no warm-up) or an int >= 0, and only under sliding eviction
    (under hard eviction a hard warm-up would change nothing)."""
    _check_optional_steps(
        "hard_eviction_steps", hard_steps,
        "steps trained with hard eviction before the sliding eviction of the run",
    )  # fmt: skip
    if hard_steps and eviction != "sliding":
        raise ValueError(
            f"hard_eviction_steps={hard_steps} is a warm-up for sliding eviction, but the "
            f"run's eviction is {eviction!r}: set eviction='sliding' or drop the warm-up"
        )


def eviction_at(step: int, eviction: str, hard_steps: int | None) -> str:
    """The eviction mode of the optimizer update with 0-based index `step`: "hard" for the
    first `hard_steps` updates, then the run's own `eviction`."""
    return "hard" if hard_steps and step < hard_steps else eviction
