"""Training: the outer loop, `train_and_evaluate(config, workdir)`.

A library module (it never reads flags): `experiments/train.py` parses the flags and calls
`train_and_evaluate`; a notebook can use every piece on its own. The pieces live in their
own modules (import each name from the module that defines it):

    losses.py       masked_cross_entropy
    optimizers.py   make_optimizer (Muon + AdamW), its labels and the LR schedule
    train_step.py   TrainState, make_train_step, the finiteness check
    evaluation.py   evaluate, Evaluator (the eval at every N of a run)
    run_config.py   resolve_config: every field validated before anything is compiled
    run_dir.py      the workdir's files, its record (config.json), the identity check
    run_log.py      metrics.jsonl, TensorBoard, theta.jsonl; step-metric means, tokens/s

    tx = make_optimizer("muon", learning_rate=2e-3)
    state = init_train_state(init_params(cfg, key), tx)
    train_step = make_train_step(tx, window=24, passes=2)
    state, metrics = train_step(state, task.batch(seed, step, batch_size))
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
from absl import logging

from sleep_consolidation.analysis import diagnostics
from sleep_consolidation.model import init_params
from sleep_consolidation.training import (
    checkpointing,
    curriculum,
    init_from,
    machine,
    run_dir,
    run_lock,
    sharding,
    stopping,
)
from sleep_consolidation.training.checkpoint_files import CONFIG_FILE
from sleep_consolidation.training.evaluation import Evaluator, metrics_line, summary_metrics
from sleep_consolidation.training.json_io import read_jsonl, write_json
from sleep_consolidation.training.optimizers import (
    lr_schedule_from_config,
    optimizer_from_config,
)
from sleep_consolidation.training.run_config import (
    config_to_dict,
    resolve_config,
)
from sleep_consolidation.training.run_dir import (
    METRICS_FILE,
    SUMMARY_FILE,
    check_workdir,
    close_all,
    io_error,
    raise_pending,
    run_record,
    signals_deferred,
)
from sleep_consolidation.training.run_log import (
    RunLog,
    StepMetrics,
    Throughput,
    has_theta,
)
from sleep_consolidation.training.train_step import (
    NonFiniteError,
    TrainState,
    init_train_state,
    train_step_from_config,
)

HISTORY_KEY = "eval_history"  # the checkpoint metadata key of the stop metric's history
TRAIN_S_KEY = "train_s_total"  # ... and of the run's training seconds up to that checkpoint
MACHINES_KEY = "machines"  # ... and of the machines that trained it so far (`machine.py`)


class Trainer:
    """One run of `config` in `workdir`: validated and checked against the workdir on
    construction (before anything is compiled), trained by `run()`. It takes no lock:
    `train_and_evaluate` holds the run's (`run_lock.hold_run`) around it.

    Args:
      config: the run config (`resolve_config`); workdir: the run directory.
      allow_config_change: continue a saved run under changed fields (`check_workdir`).
    """

    def __init__(self, config, workdir: str, *, allow_config_change: bool = False):
        self.t0 = time.time()
        self.spec = spec = resolve_config(config)
        self.c = c = config_to_dict(config)
        self.workdir = workdir = os.fspath(workdir)
        if c["init_from"] is not None:  # before anything is written or compiled
            init_from.check_init_source(c["init_from"], spec.model_config, workdir)
        self.mesh = mesh = sharding.mesh_from_config(c["data_parallel"])
        if mesh is not None:
            sharding.check_batch_size(c["batch_size"], mesh)
        self.main = sharding.is_main_process()
        try:
            os.makedirs(workdir, exist_ok=True)
            record = check_workdir(
                workdir, run_record(config, spec), allow_config_change=allow_config_change
            )
            if self.main:
                write_json(os.path.join(workdir, CONFIG_FILE), record)
            self.record = record  # saved with every checkpoint too: the run's identity
        except OSError as e:
            raise io_error(e, workdir) from e

        self.tx = optimizer_from_config(c)
        self.lr_fn = lr_schedule_from_config(c)
        # One compiled step per (N, eviction) the run uses (one unless passes_ramp_steps or
        # hard_eviction_steps is set), built when first needed: both are static under jit.
        self.train_steps: dict[tuple[int, str], Any] = {}
        self.ramp_steps = c["passes_ramp_steps"] or 0
        self.hard_steps = c["hard_eviction_steps"] or 0
        if mesh is None:
            # Committed to the device like a restored state, so that a fresh and a resumed
            # run lower to the same program (and share XLA's compilation cache).
            self.state_sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            self.place_state = functools.partial(jax.device_put, device=self.state_sharding)
            self.place_batch = lambda b: b
        else:
            self.state_sharding = sharding.replicated(mesh)
            self.place_state = functools.partial(sharding.replicate, mesh=mesh)
            self.place_batch = functools.partial(sharding.shard_batch, mesh=mesh)
        self.evaluator = Evaluator(
            spec.task, spec.task.eval_batch(c["seed"], c["eval_size"]), window=spec.window,
            schedule=spec.schedule, passes=c["passes"], eval_passes=tuple(c["eval_passes"]),
            batch_size=c["eval_batch_size"], mesh=mesh,
        )  # fmt: skip
        self.log = RunLog(workdir, main=self.main, log_theta=has_theta(spec.model_config.rule))
        self.stop_rule = stopping.StopRule.from_config(c)
        # The metric whose history decides the stop and gives steps_to_90pct (also with
        # the rule off); [(step, value)] of every eval so far, read back on a resume.
        self.stop_metric = self.stop_rule.metric if self.stop_rule else stopping.DEFAULT_METRIC
        self.history: list[tuple[int, float | None]] = []
        self.prior_s = 0.0  # training seconds of the run's earlier processes (set by run)
        self.machine = machine.describe()
        self.machines = [self.machine]  # with the earlier processes' (set by run)

    def _init_state(self) -> TrainState:
        params = init_params(self.spec.model_config, jax.random.key(self.c["seed"]))
        return init_train_state(params, self.tx)

    def _fresh_state(self) -> TrainState:
        """Step 0: a new init, or (init_from) the source run's latest parameters with a
        fresh optimizer state."""
        if self.c["init_from"] is None:
            return self._init_state()
        like = jax.eval_shape(self._init_state).params
        params = init_from.load_init_params(self.c["init_from"], like)
        logging.info("initialised %s from the parameters of %s", self.workdir, self.c["init_from"])
        return init_train_state(params, self.tx)

    def _train_step(self, passes: int, eviction: str):
        """The jitted step at N = `passes` under `eviction` (compiled once per pair)."""
        key = (passes, eviction)
        if key not in self.train_steps:
            self.train_steps[key] = train_step_from_config(
                self.c, self.spec, self.tx, mesh=self.mesh, passes=passes, eviction=eviction
            )
        return self.train_steps[key]

    def _may_stop(self, step: int) -> bool:
        # Never while N is still ramping up or the eviction warming up: the evals then score
        # a model trained otherwise than it is evaluated.
        return self.stop_rule is not None and step >= max(self.ramp_steps, self.hard_steps)

    def _restore(self, ckpt: checkpointing.Checkpointer) -> tuple[TrainState, int]:
        abstract = sharding.abstract_with_sharding(
            jax.eval_shape(self._init_state), self.state_sharding
        )
        state = ckpt.restore(abstract)
        if state is None:
            return self.place_state(self._fresh_state()), 0
        logging.info("resuming %s from step %d", self.workdir, int(state.step))
        return state, int(state.step)

    def _checkpoint_metadata(self, clock: Throughput) -> dict[str, Any]:
        # The eval history is saved with each checkpoint: a damaged metrics.jsonl line
        # must not change the stop or steps_to_90pct of a resumed run. So is the training
        # time so far: a process killed outright (a machine gone between sessions) writes
        # no summary.json, and its time would otherwise drop out of train_s_total.
        return {
            HISTORY_KEY: {"metric": self.stop_metric, "history": self.history},
            TRAIN_S_KEY: self.prior_s + clock.train_s,
            MACHINES_KEY: self.machines,
        }

    def _saved_history(self, ckpt, start: int) -> list[tuple[int, float | None]]:
        """The eval history up to `start`: the one saved with that checkpoint (for the same
        metric), else the one read back from metrics.jsonl (`self.history`)."""
        saved = ckpt.saved_metadata(start).get(HISTORY_KEY) if start else None
        if not isinstance(saved, dict) or saved.get("metric") != self.stop_metric:
            return self.history
        history = [(int(s), v) for s, v in saved["history"]]
        lost = sorted({s for s, _ in history} - {s for s, _ in self.history})
        if lost:
            logging.warning(
                "%s lacks the evals of step(s) %s (damaged lines); the history saved with "
                "checkpoint %d is used", METRICS_FILE, lost, start,
            )  # fmt: skip
        return history

    def _evaluate(self, params, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Evaluates at every N of the run; returns (metrics.jsonl keys, summary keys)."""
        evals = self.evaluator(params)
        self.log.theta(params, step)
        summary = summary_metrics(evals)
        logging.info("eval step %d: %s", step, "  ".join(
            f"{k} {v:.4f}" for k, v in summary.items() if v is not None
        ))  # fmt: skip
        line = metrics_line(evals)
        if self.c["pass_stats_size"]:
            line.update(self._pass_stats(params))
        return line, summary

    def _pass_stats(self, params) -> dict[str, float | None]:
        """`pass_stats/{fast_norm,h_norm,recall_cosine}/p{p}` after each pass p = 1..N
        (the target N) on the first pass_stats_size eval examples; NaN is logged as None."""
        tokens = self.evaluator.batch.tokens[: self.c["pass_stats_size"]]
        if tokens.shape[1] < self.spec.window:
            return {}
        stats = diagnostics.per_pass_statistics(
            params, tokens, self.spec.window, self.c["passes"], schedule=self.spec.schedule
        )
        return {
            f"pass_stats/{name}/p{p}": (v if v == v else None)  # NaN: no ssm block
            for name, values in stats.items()
            for p, v in enumerate(values, start=1)
        }

    def _line(self, i: int, means: dict[str, float], clock: Throughput) -> dict[str, Any]:
        """The metrics.jsonl line of step i + 1 (without eval), logged as a progress line."""
        step, steps = i + 1, self.c["steps"]
        rate, now = clock.lap(step)
        line = dict(means)
        line.update(step=step, lr=float(self.lr_fn(i)), tokens_per_s=rate, elapsed_s=now - self.t0)
        logging.info(
            "step %d/%d  loss %.4f  grad_norm %.3g  tokens/s %s  ETA %s",
            step, steps, line["loss"], line["grad_norm"],
            "-" if rate is None else f"{rate:.0f}", clock.eta_text(steps - step),
        )  # fmt: skip
        return line

    def _train(self, ckpt, state: TrainState, start: int, clock: Throughput, summary) -> TrainState:
        """Steps start+1..steps: logs every log_every, evaluates every eval_every and saves
        every checkpoint_every step (and all three at the last step). A stop signal
        (SIGTERM, Ctrl-C) is raised between steps only, never inside a checkpoint save or
        a log write (`run_dir.signals_deferred`)."""
        with signals_deferred():
            return self._train_steps(ckpt, state, start, clock, summary)

    def _train_steps(self, ckpt, state, start: int, clock: Throughput, summary) -> TrainState:
        c, task = self.c, self.spec.task
        steps, step_metrics = c["steps"], StepMetrics()
        for i in range(start, steps):
            raise_pending()  # a stop signal that arrived during the last step
            step = i + 1
            batch = self.place_batch(task.batch(c["seed"], i, c["batch_size"]))
            passes = curriculum.passes_at(i, c["passes"], self.ramp_steps)
            eviction = curriculum.eviction_at(i, self.spec.schedule.eviction, self.hard_steps)
            state, metrics = self._train_step(passes, eviction)(state, batch)
            step_metrics.push(step, metrics)
            if clock.mark is None:  # the first step (compilation) is startup, not training
                step_metrics.fetch()
                clock.start(step)
            is_eval = step % c["eval_every"] == 0 or step == steps
            is_ckpt = step % c["checkpoint_every"] == 0 or step == steps
            if not (is_eval or is_ckpt or step % c["log_every"] == 0):
                continue
            line = self._line(i, step_metrics.mean(), clock)  # every step so far checked
            line["passes"] = passes  # the N of this step (the ramp's, or `passes`)
            if self.hard_steps:  # 1 while the sliding-eviction run warms up with hard
                line["hard_eviction"] = int(eviction == "hard")
            converged = False
            if is_eval:
                eval_line, summary["eval"] = self._evaluate(state.params, step)
                line.update(eval_line)
                self.history.append((step, eval_line.get(self.stop_metric)))
                converged = self._may_stop(step) and self.stop_rule.decide(self.history)
            self.log.metrics(line)
            summary["final_loss"] = line["loss"]
            if is_ckpt or converged:  # a stop is saved, so that a rerun resumes at it
                ckpt.save(state, self._checkpoint_metadata(clock))
            clock.restart(step)
            if converged:
                logging.info("stopping at step %d: %s has not improved by more than %g "
                             "over the last %d evals", step, self.stop_metric,
                             self.stop_rule.min_delta, self.stop_rule.patience)  # fmt: skip
                summary["stop_reason"] = stopping.CONVERGED
                break
        return state

    def run(self) -> dict[str, Any]:
        """Trains to `config.steps` (resuming from the workdir's latest checkpoint) and
        evaluates; writes summary.json however it ends. Returns the summary dict.

        Raises:
          NonFiniteError: NaN/Inf loss or grad norm (the bad state is not saved).
          RunIOError: a write failed (full disk, unwritable workdir); the message names
            the path. The last good checkpoint is kept.
        """
        c, spec = self.c, self.spec
        clock = Throughput(self.t0, c["batch_size"] * spec.task.seq_len)
        summary: dict[str, Any] = {"status": "running", "steps": c["steps"]}
        # This process's machine, and the whole run's (with the earlier processes', below).
        summary.update(machine=self.machine, machines=self.machines)
        summary["config_digest"] = run_dir.config_digest(c)  # what "completed" refers to
        try:
            ckpt = checkpointing.Checkpointer(
                self.workdir, max_to_keep=c["keep_checkpoints"], record=self.record
            )
        except OSError as e:
            raise io_error(e, self.workdir) from e
        failure: BaseException | None = None  # the first error; nothing after it hides it
        try:
            state, start = self._restore(ckpt)
            summary["resumed_from"] = start if start else None
            # The training time of the earlier processes of a resumed run, so that
            # train_s_total is the whole run's (train_s is this process's).
            self.prior_s = _prior_train_s(ckpt, start, self.workdir)
            self.machines = machine.add_machine(_prior_machines(ckpt, start), self.machine)
            summary["machines"] = self.machines
            differ = machine.changed(self.machines)
            if differ:
                summary["machine_changed"] = differ
                logging.warning(
                    "%s was trained up to step %d on a machine that differs from this one in "
                    "%s (%s; this one: %s): its numbers are those of no single machine "
                    "(summary.json `machines`)", self.workdir, start, ", ".join(differ),
                    machine.name(self.machines[-2]), machine.name(self.machine),
                )  # fmt: skip
            self.log.start(state.params, start)
            logging.info(
                "training %s: %d params, steps %d..%d, batch %d x %d tokens, %s",
                spec.task.name, sum(x.size for x in jax.tree_util.tree_leaves(state.params)),
                start, c["steps"], c["batch_size"], spec.task.seq_len,
                "1 device" if self.mesh is None else f"data-parallel over "
                f"{self.mesh.devices.size} devices ({jax.process_count()} process(es))",
            )  # fmt: skip
            # The eval lines up to the checkpoint (`log.start` dropped the later ones) are
            # the ones an uninterrupted run logged, so the stop is recomputed exactly.
            self.history = stopping.eval_history(
                read_jsonl(os.path.join(self.workdir, METRICS_FILE)), self.stop_metric, start
            )
            self.history = self._saved_history(ckpt, start)
            stopped = bool(start) and self._may_stop(start) and self.stop_rule.decide(self.history)
            if not stopped:
                state = self._train(ckpt, state, start, clock, summary)
            if stopped or start >= c["steps"]:
                logging.info("%s is already trained to step %d (steps=%d%s)", self.workdir,
                             start, c["steps"], ", converged" if stopped else "")  # fmt: skip
                summary["eval"] = summary_metrics(self.evaluator(state.params))
                if stopped:
                    summary["stop_reason"] = stopping.CONVERGED
            with signals_deferred():  # not cut half-way either (as in the training loop)
                ckpt.wait()  # an asynchronous save that failed raises here, before "completed"
            step = int(jax.device_get(state.step))
            reason = summary.setdefault("stop_reason", stopping.STEP_CAP)
            summary.update(status="completed", step=step)
            summary.update(stopping.summary_fields(self.history, reason, self.stop_metric, step))
        except NonFiniteError as e:
            failure = e
            summary.update(status="failed", error=str(e), failed_step=e.step)
            logging.error("%s", e)
            raise
        except OSError as e:
            try:  # a save in flight may finish, so that the message names the right step
                ckpt.wait()
            except Exception as e2:
                logging.error("could not also finish saving in %s: %s", self.workdir, e2)
            failure = io_error(e, self.workdir)
            summary.update(status="failed", error=str(failure))
            logging.error("%s", failure)
            raise failure from e
        except Exception as e:  # e.g. no usable checkpoint: a failure, not an interruption
            failure = e
            summary.update(status="failed", error=f"{type(e).__name__}: {e}")
            logging.error("%s", e)
            raise
        except BaseException as e:
            failure = e
            summary.update(status="interrupted", error=f"{type(e).__name__}: {e}")
            if getattr(e, "signal_name", None):  # a stop signal (run_dir.StopSignal)
                summary["signal"] = e.signal_name
            try:  # a save in flight finishes first, so that last_checkpoint names it
                ckpt.wait()
            except Exception as e2:
                logging.error("could not also finish saving in %s: %s", self.workdir, e2)
            raise
        finally:
            summary.update(
                last_checkpoint=ckpt.latest_step(), startup_s=clock.startup_s,
                train_s=clock.train_s, tokens_per_s=clock.tokens_per_s(),
                train_s_total=self.prior_s + clock.train_s,
                wall_s=time.time() - self.t0,
            )  # fmt: skip
            self._finish(ckpt, summary, failure)
        return summary

    def _finish(self, ckpt, summary: dict[str, Any], failure: BaseException | None) -> None:
        """Writes summary.json, then closes the logs and the checkpointer (which waits for
        a save in flight), each tried whatever the others did (`run_dir.close_all`)."""
        closers = [
            ("write the summary of", functools.partial(self._write_summary, summary)),
            ("close the logs of", self.log.close),
            ("close the checkpoints of", ckpt.close),
        ]
        close_all(closers, self.workdir, failure)

    def _write_summary(self, summary: dict[str, Any]) -> None:
        if self.main:
            write_json(os.path.join(self.workdir, SUMMARY_FILE), summary)


def _prior_train_s(ckpt: checkpointing.Checkpointer, start: int, workdir: str) -> float:
    """The training seconds of the run up to checkpoint `start` (0 for a fresh run): the
    ones saved with that checkpoint; for a checkpoint saved without them (before
    2026-12-04), train_s_total (else train_s) of the summary.json an earlier process left,
    0 without one."""
    if not start:
        return 0.0
    saved = ckpt.saved_metadata(start).get(TRAIN_S_KEY)
    if isinstance(saved, int | float) and not isinstance(saved, bool):
        return float(saved)
    try:
        with open(os.path.join(workdir, SUMMARY_FILE)) as f:
            s = json.load(f)
        return float(s.get("train_s_total", s.get("train_s")) or 0.0)
    except (OSError, ValueError, TypeError, AttributeError):  # none, torn, or not a dict
        return 0.0


def _prior_machines(ckpt: checkpointing.Checkpointer, start: int) -> list[dict[str, Any]]:
    """The machines that trained the run up to checkpoint `start` ([] for a fresh run);
    `machine.UNRECORDED` for a checkpoint saved without them (before 2026-12-05)."""
    if not start:
        return []
    saved = ckpt.saved_metadata(start).get(MACHINES_KEY)
    if isinstance(saved, list) and saved and all(isinstance(m, dict) for m in saved):
        return saved
    return [dict(machine.UNRECORDED)]


def _check_before_the_workdir(config) -> None:
    """What `Trainer` refuses before it touches the workdir (the config, the devices),
    checked before the run's lock creates the workdir."""
    resolve_config(config)
    c = config_to_dict(config)
    mesh = sharding.mesh_from_config(c["data_parallel"])
    if mesh is not None:
        sharding.check_batch_size(c["batch_size"], mesh)


def train_and_evaluate(
    config, workdir: str, *, allow_config_change: bool = False
) -> dict[str, Any]:
    """Trains and evaluates one config, resuming from `workdir` if it holds a checkpoint.

    Writes `config.json` (`run_dir.run_record`), `metrics.jsonl` (a line per logged step:
    `step`, `loss` (mean since the last line), `grad_norm`, `token_acc`, `lr`,
    `tokens_per_s`, `elapsed_s`; `eval/...` per depth at eval steps, `eval_N{M}/...` for
    M in `eval_passes`), the same numbers as TensorBoard events, checkpoints, `theta.jsonl`
    with a rule that has a theta (`theta_record`, at step 0 and every eval), and `summary.json`
    (`eval`: the last eval without the `eval/` prefix; the convergence fields of
    `stopping.summary_fields`; `machine`, this process's machine, `machines`, each machine that
    trained the run, and `machine_changed`, the fields that differ, where a resume may have
    changed the arithmetic: `machine.py`). With `config.data_parallel` it trains over a data mesh
    (`sharding.py`); in a multi-process run every process calls this and process 0 writes.

    Args:
      config: the run config (a ConfigDict or a mapping with every field of CONFIG_FIELDS).
      workdir: the run directory (created if needed).
      allow_config_change: continue the run saved in `workdir` although a field that
        changes what is computed differs (passes, seed, window, ...; `check_workdir`); the
        change is appended to config.json's `config_changes`.

    Returns:
      the summary dict.

    Raises:
      ValueError: an invalid config (before anything is compiled).
      ConfigConflictError: `workdir` holds a run of a different config (`check_workdir`).
      NonFiniteError: NaN/Inf loss or grad norm; the bad state is not checkpointed.
      RunIOError: an OSError writing the run (full disk, unwritable workdir); the message
        names the path; the last good checkpoint is kept.
      LockedError: another live process trains `workdir` (`run_lock.hold_run`); nothing
        was written.
    """
    _check_before_the_workdir(config)
    with run_lock.hold_run(os.fspath(workdir), main=sharding.is_main_process()):
        return Trainer(config, workdir, allow_config_change=allow_config_change).run()
