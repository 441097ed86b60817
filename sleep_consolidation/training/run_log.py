"""What a run logs while it runs: `metrics.jsonl`, TensorBoard event files and, for a
rule with parameters of its own (rule="parametric", a custom rule's theta), `theta.jsonl`.
Only process 0 writes; the other processes of a multi-host run hold a `RunLog` that writes
nothing.

TensorBoard gets every number of a metrics line: the train metrics as `train/{key}` and
the eval metrics under their own keys with characters a TensorBoard tag may not hold
made `_` (`eval/acc/d_4`, `eval_N1/loss`, ...; `tensorboard_tag`), so that

    tensorboard --logdir runs/

shows the train and eval curves of every run under runs/. `StepMetrics` and `Throughput`
compute a line's train metrics and tokens/s.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any

import jax
import numpy as np

from sleep_consolidation.model import Params
from sleep_consolidation.rules import get_rule, parametric
from sleep_consolidation.training.json_io import append_jsonl, truncate_jsonl
from sleep_consolidation.training.run_dir import METRICS_FILE, THETA_FILE
from sleep_consolidation.training.train_step import check_finite


def tensorboard_tag(key: str) -> str:
    """The TensorBoard tag of a `metrics.jsonl` key: train metrics (no "/") go under
    "train/"; characters other than letters, digits, `_`, `-`, `.` and `/` become `_`
    (TensorBoard's rule for tag names, which its writers otherwise apply with a warning)."""
    return re.sub(r"[^-/\w.]", "_", key if "/" in key else f"train/{key}")


def theta_record(params: Params, step: int) -> dict[str, Any]:
    """One `theta.jsonl` line. The parametric rule: `parametric.describe_theta` of every ssm
    layer's theta (coefficients per head, the nearest built-in point of the head mean and
    its distance); any other rule with a theta (a registered custom rule): its values, as
    nested lists under their names."""
    layers = []
    for i in params.config.ssm_blocks:
        theta = jax.device_get(params.blocks[i]["mixer"]["theta"])
        if params.config.rule == parametric.NAME:
            d = parametric.describe_theta(theta)
            layers.append(
                {"block": i, **{k: d[k] for k in ("coefficients", "nearest", "distance")}}
            )
        else:
            values = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64).tolist(), theta)
            layers.append({"block": i, "theta": values})
    return {"step": int(step), "layers": layers}


def has_theta(rule: str) -> bool:
    """Whether `rule` learns parameters of its own (the parametric rule, a custom rule
    registered with an `init_theta`): its run then writes theta.jsonl."""
    return get_rule(rule).init_theta is not None


class RunLog:
    """The run's logs in `workdir`.

    Args:
      workdir: the run directory.
      main: whether this is process 0 (the only one that writes).
      log_theta: also write `theta.jsonl` (a rule with a theta: `has_theta`).
    """

    def __init__(self, workdir: str, *, main: bool, log_theta: bool):
        self.main = main
        self.log_theta = main and log_theta
        self.metrics_path = os.path.join(workdir, METRICS_FILE)
        self.theta_path = os.path.join(workdir, THETA_FILE)
        self.workdir = workdir
        self._tb = None  # the TensorBoard writer, opened by `start`

    def start(self, params: Params, step: int) -> None:
        """Drops what was logged after `step` (the restored checkpoint; 0 for a fresh run)
        and, on a fresh start, logs the initial theta."""
        if self.main:
            truncate_jsonl(self.metrics_path, step)
            # Imported here: it takes a while, and only process 0 of a run needs it.
            from tensorboardX import SummaryWriter

            # A resumed run appends a new event file; purge_step makes TensorBoard drop
            # the older files' events after the restored step (they are logged again).
            # The suffix keeps two starts within one second (the name's timestamp) apart.
            self._tb = SummaryWriter(
                self.workdir, purge_step=step + 1 if step else None, filename_suffix=f".from{step}"
            )
        if self.log_theta:  # step 0 (the init) is logged by a fresh start only
            truncate_jsonl(self.theta_path, step if step else -1)
            if not step:
                self.theta(params, 0)

    def metrics(self, line: dict[str, Any]) -> None:
        """Appends one `metrics.jsonl` line (its `step` key gives the step)."""
        if self.main:
            append_jsonl(self.metrics_path, line)
        if self._tb is not None:
            step = line["step"]
            for k, v in line.items():
                if k != "step" and v is not None:  # None: a NaN metric, or no rate yet
                    self._tb.add_scalar(tensorboard_tag(k), v, step)
            self._tb.flush()

    def theta(self, params: Params, step: int) -> None:
        """Appends `theta_record(params, step)` to `theta.jsonl` (a rule with a theta)."""
        if self.log_theta:
            append_jsonl(self.theta_path, theta_record(params, step))

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class StepMetrics:
    """The train step's device metrics, fetched one step late (so that the host prepares
    the next batch while the device runs), checked finite, and averaged over the steps
    since the last logged line."""

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._count = 0
        self._pending = None  # (step, device metrics) not fetched yet

    def push(self, step: int, metrics) -> None:
        """Fetches the previous step's metrics and holds `step`'s (device arrays)."""
        self.fetch()
        self._pending = (step, metrics)

    def fetch(self) -> None:
        """Fetches the pending step's metrics; raises NonFiniteError on NaN/Inf."""
        if self._pending is None:
            return
        step, m = self._pending
        self._pending = None
        m = jax.device_get(m)
        check_finite(step, m)
        for k, v in m.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += 1

    def mean(self) -> dict[str, float]:
        """Every step so far fetched and checked; their mean metrics, then a fresh start."""
        self.fetch()
        out = {k: v / self._count for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        return out


@dataclasses.dataclass
class Throughput:
    """Training throughput, timed in laps between logged lines. It excludes startup (the
    first step included: it compiles) and the time spent evaluating, logging and saving
    between laps.

    Attributes:
      t0: when the run started; tokens_per_step: batch size x sequence length.
      startup_s, train_s, timed_steps: startup time, timed training time and its steps.
      mark: (time, step) where the current lap began; None before the first step.
    """

    t0: float
    tokens_per_step: int
    startup_s: float | None = None
    train_s: float = 0.0
    timed_steps: int = 0
    mark: tuple[float, int] | None = None  # (time, step) where the current lap began

    def start(self, step: int) -> None:
        """Startup ends (after the first step, `step`); the first lap begins."""
        self.startup_s = time.time() - self.t0
        self.restart(step)

    def restart(self, step: int) -> None:
        """A new lap begins after `step`."""
        self.mark = (time.time(), step)

    def lap(self, step: int) -> tuple[float | None, float]:
        """Ends the lap at `step`; returns (tokens/s over it or None, the time now)."""
        now = time.time()
        t, s = self.mark
        self.train_s, self.timed_steps = self.train_s + now - t, self.timed_steps + step - s
        return ((step - s) * self.tokens_per_step / (now - t) if step > s else None), now

    def eta(self, steps_left: int) -> float:
        """Seconds to train `steps_left` more steps at the rate measured so far."""
        return self.train_s / max(self.timed_steps, 1) * steps_left

    def eta_text(self, steps_left: int) -> str:
        """`eta` as "1h02m" or "3m05s"."""
        m, s = divmod(int(self.eta(steps_left)), 60)
        h, m = divmod(m, 60)
        return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"

    def tokens_per_s(self) -> float | None:
        """Tokens per second over every timed lap (None before the first)."""
        return self.timed_steps * self.tokens_per_step / self.train_s if self.train_s else None
