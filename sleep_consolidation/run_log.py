"""What a run logs while it runs: `metrics.jsonl` and, for rule="parametric",
`theta.jsonl`. Only process 0 writes; the other processes of a multi-host run hold a
`RunLog` that writes nothing."""

from __future__ import annotations

import os
from typing import Any

import jax

from sleep_consolidation import parametric
from sleep_consolidation.model import Params
from sleep_consolidation.run_dir import METRICS_FILE, THETA_FILE, append_jsonl, truncate_jsonl


def theta_record(params: Params, step: int) -> dict[str, Any]:
    """One `theta.jsonl` line: `parametric.describe_theta` of every ssm layer's theta
    (coefficients per head, the nearest built-in point of the head mean and its distance)."""
    layers = []
    for i in params.config.ssm_blocks:
        d = parametric.describe_theta(jax.device_get(params.blocks[i]["mixer"]["theta"]))
        layers.append({"block": i, **{k: d[k] for k in ("coefficients", "nearest", "distance")}})
    return {"step": int(step), "layers": layers}


class RunLog:
    """The run's logs in `workdir`.

    Args:
      workdir: the run directory.
      main: whether this is process 0 (the only one that writes).
      log_theta: also write `theta.jsonl` (rule="parametric").
    """

    def __init__(self, workdir: str, *, main: bool, log_theta: bool):
        self.main = main
        self.log_theta = main and log_theta
        self.metrics_path = os.path.join(workdir, METRICS_FILE)
        self.theta_path = os.path.join(workdir, THETA_FILE)

    def start(self, params: Params, step: int) -> None:
        """Drops what was logged after `step` (the restored checkpoint; 0 for a fresh run)
        and, on a fresh start, logs the initial theta."""
        if self.main:
            truncate_jsonl(self.metrics_path, step)
        if self.log_theta:  # step 0 (the init) is logged by a fresh start only
            truncate_jsonl(self.theta_path, step if step else -1)
            if not step:
                self.theta(params, 0)

    def metrics(self, line: dict[str, Any]) -> None:
        """Appends one `metrics.jsonl` line (its `step` key gives the step)."""
        if self.main:
            append_jsonl(self.metrics_path, line)

    def theta(self, params: Params, step: int) -> None:
        """Appends `theta_record(params, step)` to `theta.jsonl` (rule="parametric")."""
        if self.log_theta:
            append_jsonl(self.theta_path, theta_record(params, step))

    def close(self) -> None:
        """Flushes and closes whatever the log holds open."""
