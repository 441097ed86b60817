"""One live view of a whole sweep: runs done / running / queued, each running run's step
and loss (from its metrics.jsonl), and an overall ETA from the measured step rates.

On a terminal it is a `rich` live table; otherwise (a log file, CI) plain lines, one per
change and at most one every `plain_every` seconds.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from experiments.sweeping.rundir import RunDir

QUEUED, RUNNING, DONE, FAILED, SKIPPED = "queued", "running", "done", "failed", "skipped"


@dataclasses.dataclass
class RunProgress:
    """What the sweep knows of one run; `state` is set by the runner."""

    name: str
    run_dir: str
    steps: int
    state: str = QUEUED
    step: int = 0
    loss: float | None = None
    sec_per_step: float | None = None  # measured over this process's logged steps
    overhead_s: float | None = None  # startup (compile) + eval, beyond sec_per_step * steps

    def read(self) -> None:
        """Updates step, loss and rates from the run's metrics.jsonl (or summary.json)."""
        rd = RunDir(self.run_dir)
        if self.state in (DONE, SKIPPED):
            s = rd.summary() or {}
            trained = (s.get("step") or 0) - (s.get("resumed_from") or 0)
            if s.get("train_s") and trained > 0:
                self.sec_per_step = s["train_s"] / trained
                self.overhead_s = max((s.get("wall_s") or 0.0) - s["train_s"], 0.0)
            self.step = s.get("step") or self.step
        lines = [m for m in rd.metrics() if "step" in m and "elapsed_s" in m]
        # Only the lines of the latest process: elapsed_s restarts at a resume.
        seg = lines[-1:]
        for m in reversed(lines[:-1]):
            if m["elapsed_s"] >= seg[0]["elapsed_s"] or m["step"] >= seg[0]["step"]:
                break
            seg.insert(0, m)
        if not seg:
            return
        last = seg[-1]
        if self.state not in (DONE, SKIPPED):
            self.step, self.loss = last["step"], last.get("loss")
        elif self.loss is None:
            self.loss = last.get("loss")
        if self.state == RUNNING and len(seg) >= 2 and last["step"] > seg[0]["step"]:
            sps = (last["elapsed_s"] - seg[0]["elapsed_s"]) / (last["step"] - seg[0]["step"])
            self.sec_per_step = sps
            self.overhead_s = max(seg[0]["elapsed_s"] - seg[0]["step"] * sps, 0.0)


def remaining_s(runs: Sequence[RunProgress], parallel: int, prior_run_s: float | None = None):
    """Seconds until every run is done, or None when nothing is measured yet.

    A run not yet measured is charged the mean measured overhead plus its steps at the
    mean measured seconds per step (or `prior_run_s` when nothing is measured at all);
    the total is spread over `parallel` slots.
    """
    measured = [r for r in runs if r.sec_per_step is not None]
    mean_sps = sum(r.sec_per_step for r in measured) / len(measured) if measured else None
    over = [r.overhead_s for r in measured if r.overhead_s is not None]
    mean_over = sum(over) / len(over) if over else 0.0
    total, longest = 0.0, 0.0
    for r in runs:
        if r.state in (DONE, SKIPPED, FAILED):
            continue
        if r.state == RUNNING and r.sec_per_step is not None:
            left = (r.steps - r.step) * r.sec_per_step
        elif mean_sps is not None:
            left = mean_over + (r.steps - r.step) * mean_sps
        elif prior_run_s is not None:
            left = prior_run_s
        else:
            return None
        total += left
        longest = max(longest, left if r.state == RUNNING else 0.0)
    return max(total / max(parallel, 1), longest)


def fmt_s(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class SweepProgress:
    """The sweep's display. Use as a context manager; call `refresh()` after changes."""

    def __init__(self, title: str, runs: Sequence[RunProgress], parallel: int,
                 console: Console | None = None, plain_every: float = 30.0,
                 prior_run_s: float | None = None):  # fmt: skip
        self.title, self.runs, self.parallel = title, list(runs), parallel
        self.console = console or Console(file=sys.stdout)
        self.plain_every, self.prior_run_s = plain_every, prior_run_s
        self._live: Live | None = None
        self._last_line, self._last_t = None, -math.inf
        self.t0 = time.time()

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in (DONE, RUNNING, QUEUED, FAILED)}
        for r in self.runs:
            out[DONE if r.state == SKIPPED else r.state] += 1
        return out

    def headline(self) -> str:
        c = self.counts()
        eta = remaining_s(self.runs, self.parallel, self.prior_run_s)
        failed = f", {c[FAILED]} failed" if c[FAILED] else ""
        return (f"{self.title}: {c[DONE]}/{len(self.runs)} done, {c[RUNNING]} running, "
                f"{c[QUEUED]} queued{failed}; elapsed {fmt_s(time.time() - self.t0)}, "
                f"ETA {fmt_s(eta)}")  # fmt: skip

    def render(self) -> Group:
        """The rich view: the headline and a row per running (then failed) run."""
        table = Table(box=None, pad_edge=False)
        for col in ("run", "step", "loss", "s/step"):
            table.add_column(col, justify="left" if col == "run" else "right")
        for r in self.runs:
            if r.state in (RUNNING, FAILED):
                table.add_row(
                    r.name + (" [failed]" if r.state == FAILED else ""),
                    f"{r.step}/{r.steps}",
                    "-" if r.loss is None else f"{r.loss:.4f}",
                    "-" if r.sec_per_step is None else f"{r.sec_per_step:.3f}",
                )
        head = Text(self.headline(), style="bold")
        return Group(head, table) if table.row_count else Group(head)

    def line(self) -> str:
        """The plain view: the headline and `name step/steps loss` per running run."""
        parts = [f"{r.name} {r.step}/{r.steps}" + ("" if r.loss is None else f" loss {r.loss:.4f}")
                 for r in self.runs if r.state == RUNNING]  # fmt: skip
        return "[sweep] " + self.headline() + ("" if not parts else " | " + " | ".join(parts))

    def log(self, message: str) -> None:
        """An event line (a run started or ended), above the live view."""
        self.console.print(f"[sweep] {message}", markup=False, highlight=False)

    def refresh(self, force: bool = False) -> None:
        for r in self.runs:
            if r.state == RUNNING:
                r.read()
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            return
        line = self.line()
        key = line.split("; elapsed")[0] + "|".join(
            f"{r.name}{r.step}" for r in self.runs if r.state == RUNNING
        )
        now = time.time()
        if force or (key != self._last_line and now - self._last_t >= self.plain_every):
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            self._last_line, self._last_t = key, now

    def __enter__(self):
        for r in self.runs:
            if r.state == SKIPPED:
                r.read()  # finished runs measure the step rate before anything runs
        if self.console.is_terminal:
            self._live = Live(self.render(), console=self.console, refresh_per_second=2)
            self._live.__enter__()
        else:
            self.refresh(force=True)
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.__exit__(*exc)
            self._live = None
        else:
            self.refresh(force=True)
