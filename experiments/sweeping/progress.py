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
    wall_s: float | None = None  # a finished run's whole time (summary.json)
    started_at: float | None = None  # when the sweep first saw it running (its clock)
    lines_before: int | None = None  # metrics lines already there when it started
    logged: bool = False  # it has logged a step since it started (else: compiling)

    def read(self) -> None:
        """Updates step, loss and rates from the run's metrics.jsonl (or summary.json)."""
        rd = RunDir(self.run_dir)
        if self.state in (DONE, SKIPPED):
            s = rd.summary() or {}
            trained = (s.get("step") or 0) - (s.get("resumed_from") or 0)
            if s.get("train_s") and trained > 0:
                self.sec_per_step = s["train_s"] / trained
                self.overhead_s = max((s.get("wall_s") or 0.0) - s["train_s"], 0.0)
            if s.get("wall_s") and trained > 0:
                self.wall_s = s["wall_s"]
            self.step = s.get("step") or self.step
        lines = [m for m in rd.metrics() if "step" in m and "elapsed_s" in m]
        if self.state == RUNNING and self.lines_before is None:
            self.lines_before = len(lines)  # a resumed run's earlier lines are not its own
        self.logged = self.state != RUNNING or len(lines) > (self.lines_before or 0)
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


def expected_run_s(runs: Sequence[RunProgress], prior_run_s: float | None = None):
    """Seconds a run takes from launch to end, before it has a rate of its own: the mean
    whole time of the runs finished in this sweep, else `prior_run_s` (the sweep's
    est_run_s), else the mean measured startup plus `steps` at the mean measured seconds
    per step (a function of steps), else None."""
    done = [r.wall_s for r in runs if r.state in (DONE, SKIPPED) and r.wall_s]
    if done:
        return lambda steps: sum(done) / len(done)
    if prior_run_s is not None:
        return lambda steps: prior_run_s
    measured = [r for r in runs if r.sec_per_step is not None]
    if not measured:
        return None
    sps = sum(r.sec_per_step for r in measured) / len(measured)
    over = [r.overhead_s for r in measured if r.overhead_s is not None]
    mean_over = sum(over) / len(over) if over else 0.0
    return lambda steps: mean_over + steps * sps


def remaining_s(
    runs: Sequence[RunProgress],
    parallel: int,
    prior_run_s: float | None = None,
    now: float | None = None,
):
    """Seconds until every run is done, or None when nothing is known to estimate from.

    A running run with a measured rate is charged its steps left at its own rate; one
    still starting (compiling) the expected run time (`expected_run_s`) less the time it
    has run, so the estimate counts down (but never below its steps at the mean measured
    rate); a queued run the expected run time. Queued runs
    then fill the `parallel` slots in order as the running ones free them.
    """
    now = time.time() if now is None else now
    expected = expected_run_s(runs, prior_run_s)
    rates = [r.sec_per_step for r in runs if r.sec_per_step is not None]
    # A run still compiling has at least its steps to train: at the mean measured rate, so
    # that one slower to start than expected does not show as about to end.
    least = (lambda r: r.steps * sum(rates) / len(rates)) if rates else (lambda r: 0.0)
    slots, queued = [], []
    for r in runs:
        if r.state in (DONE, SKIPPED, FAILED):
            continue
        if r.state == RUNNING and r.sec_per_step is not None:
            slots.append(max(r.steps - r.step, 0) * r.sec_per_step)
        elif expected is None:
            return None
        elif r.state == RUNNING:
            ran = 0.0 if r.started_at is None else now - r.started_at
            slots.append(max(expected(r.steps) - ran, least(r)))
        else:
            queued.append(expected(r.steps))
    slots += [0.0] * max(parallel - len(slots), 0)
    for left in queued:
        i = min(range(len(slots)), key=slots.__getitem__)
        slots[i] += left
    return max(slots, default=0.0)


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
                 prior_run_s: float | None = None, clock=time.time):  # fmt: skip
        self.title, self.runs, self.parallel = title, list(runs), parallel
        self.console = console or Console(file=sys.stdout)
        self.plain_every, self.prior_run_s = plain_every, prior_run_s
        self.clock = clock  # time.time; a test's fake clock
        self._live: Live | None = None
        self._last_line, self._last_t = None, -math.inf
        self.t0 = clock()

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in (DONE, RUNNING, QUEUED, FAILED)}
        for r in self.runs:
            out[DONE if r.state == SKIPPED else r.state] += 1
        return out

    def headline(self) -> str:
        c = self.counts()
        now = self.clock()
        eta = remaining_s(self.runs, self.parallel, self.prior_run_s, now=now)
        failed = f", {c[FAILED]} failed" if c[FAILED] else ""
        return (f"{self.title}: {c[DONE]}/{len(self.runs)} done, {c[RUNNING]} running, "
                f"{c[QUEUED]} queued{failed}; elapsed {fmt_s(now - self.t0)}, "
                f"ETA {fmt_s(eta)}")  # fmt: skip

    @staticmethod
    def _cells(r: RunProgress) -> tuple[str, str, str]:
        """step, loss and s/step of a running run; "compiling" until it logs a step."""
        if not r.logged:
            return "compiling", "-", "-"
        return (
            f"{r.step}/{r.steps}",
            "-" if r.loss is None else f"{r.loss:.4f}",
            "-" if r.sec_per_step is None else f"{r.sec_per_step:.3f}",
        )

    def render(self) -> Group:
        """The rich view: the headline and a row per running (then failed) run."""
        table = Table(box=None, pad_edge=False)
        for col in ("run", "step", "loss", "s/step"):
            table.add_column(col, justify="left" if col == "run" else "right")
        for r in self.runs:
            if r.state in (RUNNING, FAILED):
                table.add_row(r.name + (" [failed]" if r.state == FAILED else ""), *self._cells(r))
        head = Text(self.headline(), style="bold")
        return Group(head, table) if table.row_count else Group(head)

    def line(self) -> str:
        """The plain view, one line: the headline, then `name step/steps loss L s/step S`
        (or `name compiling`) per running run."""
        parts = []
        for r in self.runs:
            if r.state == RUNNING:
                step, loss, sps = self._cells(r)
                parts.append(f"{r.name} {step}" + (f" loss {loss}" if loss != "-" else "")
                             + (f" {sps} s/step" if sps != "-" else ""))  # fmt: skip
        return "[sweep] " + self.headline() + ("" if not parts else " | " + " | ".join(parts))

    def log(self, message: str) -> None:
        """An event line (a run started or ended), above the live view; never wrapped."""
        self.console.print(f"[sweep] {message}", markup=False, highlight=False, soft_wrap=True)

    def refresh(self, force: bool = False) -> None:
        for r in self.runs:
            if r.state == RUNNING:
                if r.started_at is None:
                    r.started_at = self.clock()
                r.read()
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            return
        line = self.line()
        key = line.split("; elapsed")[0] + "|".join(
            f"{r.name}{r.step}" for r in self.runs if r.state == RUNNING
        )
        now = self.clock()
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
