"""Looking things up in a sweep's result records.

A record (`runner.collect_results`) is one run: its point, overrides, seed, status, final
`eval` metrics (summary.json) and run directory.
"""

from __future__ import annotations

from collections.abc import Sequence


def completed(records: Sequence[dict]) -> list[dict]:
    """The records of the runs that finished; the others have no final metrics."""
    return [r for r in records if r["status"] == "completed"]


def depth_keys(records: Sequence[dict], metric: str) -> list[str]:
    """The per-depth keys of `metric` (`{metric}/d=...`) in the records, shallowest first."""
    keys = set()
    for r in records:
        keys.update(k for k in r["eval"] if k.startswith(f"{metric}/d="))
    return sorted(keys, key=lambda k: float(k.split("=")[1]))


def is_unconverged(record: dict) -> bool:
    """Whether the run did not converge: it hit the step cap, or ran without the stopping
    rule (summary.json `converged` is missing or false)."""
    return record.get("converged") is not True


def by_point(records: Sequence[dict]) -> dict[str, list[dict]]:
    """The records grouped by point name, in the order the points first appear."""
    points: dict[str, list[dict]] = {}
    for r in records:
        points.setdefault(r["point"], []).append(r)
    return points
