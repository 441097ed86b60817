"""The one reader of a training run's directory: config.json, summary.json, metrics.jsonl.

Every read tolerates a run that is still being written (missing files, a torn last line),
since the sweep reads the directories of runs in flight.
"""

from __future__ import annotations

import json
import os
from typing import Any

from sleep_consolidation.training.checkpoint_files import CONFIG_FILE
from sleep_consolidation.training.json_io import line_problem
from sleep_consolidation.training.run_dir import (
    METRICS_FILE,
    SUMMARY_FILE,
    THETA_FILE,
    summary_mismatch,
)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):  # missing, or caught mid-write by another process
        return None


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:  # a torn line (a kill during an append); the rest is good
            continue
        if line_problem(obj) is None:  # a damaged line (wrong types) is dropped too
            out.append(obj)
    return out


class RunDir:
    """A run's workdir, as `experiments.train` writes it."""

    def __init__(self, path: str):
        self.path = os.fspath(path)

    def config(self) -> dict[str, Any] | None:
        """config.json: {"config": the run's ConfigDict as a dict, "model_config", ...};
        None if it is missing or is not such a record (e.g. edited into a list)."""
        record = _read_json(os.path.join(self.path, CONFIG_FILE))
        ok = isinstance(record, dict) and isinstance(record.get("config"), dict)
        return record if ok else None

    def summary(self) -> dict[str, Any] | None:
        """summary.json: status, step, eval, timings; None before the run has ended (or if
        it is not a JSON object)."""
        summary = _read_json(os.path.join(self.path, SUMMARY_FILE))
        return summary if isinstance(summary, dict) else None

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl, one dict per logged step."""
        return _read_jsonl(os.path.join(self.path, METRICS_FILE))

    def theta(self) -> list[dict[str, Any]]:
        """theta.jsonl (rule="parametric" runs only)."""
        return _read_jsonl(os.path.join(self.path, THETA_FILE))

    def finished(self) -> bool:
        """Whether summary.json shows the run of config.json completed (both files: a run
        extended or changed after it completed is not finished; `summary_mismatch`)."""
        return summary_mismatch(self.summary(), self.config()) is None

    def loss_curve(self) -> list[tuple[int, float]]:
        return [(m["step"], m["loss"]) for m in self.metrics() if m.get("loss") is not None]
