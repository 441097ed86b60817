"""Evaluation: the task metric per depth on a fixed eval batch, at the training N and at
any other pass counts (`Evaluator`, what the loop calls at eval steps)."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from sleep_consolidation.config import Schedule, check_sleep_reaches, resolve_schedule
from sleep_consolidation.model import Params
from sleep_consolidation.sequence import forward
from sleep_consolidation.tasks import Task
from sleep_consolidation.tasks.base import metrics_from_sums, per_depth_sums
from sleep_consolidation.training import sharding

_EVAL_STATIC = ("window", "passes", "schedule", "depths", "positions", "per_position")


def _eval_sums_fn(
    params, batch, window, passes, schedule, depths, positions=None, per_position=False
):
    # Logits only at the task's answer positions (every other position has no answer, so
    # the sums are the same); the unembedding is most of an eval forward at research scale.
    logits = forward(params, batch.tokens, window, passes, schedule=schedule, positions=positions)
    if positions is not None:
        batch = jax.tree.map(lambda x: x[:, np.asarray(positions)], batch)
    sums = per_depth_sums(logits, batch, depths)
    if per_position:  # token accuracy at each answer position (e.g. Rule 110's Q1..Q4)
        on = jnp.asarray(batch.loss_mask, jnp.float32)
        right = (jnp.argmax(logits, axis=-1) == batch.targets).astype(jnp.float32)
        sums["position_tokens"] = jnp.sum(on, axis=0)
        sums["position_correct"] = jnp.sum(on * right, axis=0)
    return sums


_eval_sums = jax.jit(_eval_sums_fn, static_argnames=_EVAL_STATIC)


@functools.lru_cache(maxsize=8)
def _eval_sums_on(mesh: jax.sharding.Mesh):
    # Replicated sums: every process can read them (and they stay replicated when added).
    return jax.jit(
        _eval_sums_fn, static_argnames=_EVAL_STATIC, out_shardings=sharding.replicated(mesh)
    )


def evaluate(
    params: Params,
    task: Task,
    batch,
    *,
    window: int | None = None,
    passes: int = 1,
    schedule: Schedule | None = None,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    **schedule_kwargs,
) -> dict[str, float]:
    """The task metric per depth on `batch` (e.g. `task.eval_batch(seed, size)`).

    Args:
      window: eviction window (default `task.default_window`); passes, schedule (or its
        fields as keywords): as in `forward`.
      batch_size: examples per forward call (the last call is padded with empty rows).
      mesh: split each call's examples over this data-parallel mesh (`params` replicated
        on it); batch_size is rounded up to a multiple of its device count.

    Returns:
      Python floats `loss`, `acc` and `loss/d={d}`, `acc/d={d}` for d in `task.depths`
      (exact-answer accuracy; NaN for a depth with no answers in `batch`); for a task with
      `answer_position_names`, also `acc/{name}`: the token accuracy at that answer position
      (Rule 110's `acc/Q1`..: which stored state the model can compute on).
    """
    schedule = resolve_schedule(schedule, schedule_kwargs)
    if params.config.vocab_size != task.vocab_size:
        # Ids of the smaller vocabulary all embed, so the numbers would look plausible.
        raise ValueError(
            f"evaluate: the model's vocab_size {params.config.vocab_size} differs from task "
            f"{task.name}'s vocab_size {task.vocab_size}: the params belong to another task"
        )
    window = task.default_window if window is None else window
    if passes > 1:  # N would change no answer: a sweep over N would report no effect
        check_sleep_reaches(window, task.seq_len, task.answer_positions)
    depths = tuple(task.depths)
    n = int(batch.tokens.shape[0])
    chunk = max(1, min(batch_size, n))
    if mesh is not None:
        chunk += -chunk % mesh.devices.size
    pad = -n % chunk
    fields = {f.name: np.asarray(getattr(batch, f.name)) for f in dataclasses.fields(batch)}
    if pad:  # empty rows: no loss mask, group -1, so they add nothing to the sums
        fill = {"group": -1}
        fields = {
            k: np.concatenate([v, np.full((pad, *v.shape[1:]), fill.get(k, 0), v.dtype)])
            for k, v in fields.items()
        }
    padded = type(batch)(**fields)
    sums_fn = _eval_sums if mesh is None else _eval_sums_on(mesh)
    names = task.answer_position_names
    sums = None
    for i in range(0, n + pad, chunk):
        part_batch = padded[i : i + chunk]
        if mesh is not None:
            part_batch = sharding.shard_batch(part_batch, mesh)
        part = sums_fn(
            params, part_batch, window, passes, schedule, depths, task.answer_positions,
            per_position=names is not None,
        )  # fmt: skip
        sums = part if sums is None else jax.tree_util.tree_map(jnp.add, sums, part)
    out = {k: float(v) for k, v in metrics_from_sums(sums, depths).items()}
    if names is not None:
        tokens, correct = np.asarray(sums["position_tokens"]), np.asarray(sums["position_correct"])
        for name, tok, ok in zip(names, tokens, correct, strict=True):
            out[f"acc/{name}"] = float(ok / tok) if tok else math.nan
    return out


def _finite_or_none(x: float):
    return x if math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """`evaluate` on one eval batch at the training pass count and at each of
    `eval_passes` (each distinct N evaluated once).

    Attributes:
      task, batch: the task and its eval batch (`task.eval_batch(seed, size)`).
      window, schedule, passes: the run's schedule (passes: the training N).
      eval_passes: further pass counts M to evaluate at.
      batch_size, mesh: as in `evaluate`.
    """

    task: Task
    batch: object
    window: int
    schedule: Schedule
    passes: int
    eval_passes: tuple[int, ...] = ()
    batch_size: int = 256
    mesh: jax.sharding.Mesh | None = None

    def __call__(self, params: Params) -> dict[str, dict[str, float | None]]:
        """Evaluates `params`.

        Returns:
          {"eval": metrics at the training N, "eval_N{M}": at N=M for each of eval_passes},
          each `evaluate`'s dict with NaN replaced by None (JSON has no NaN).
        """
        by_n: dict[int, dict[str, float | None]] = {}
        for m in (self.passes, *self.eval_passes):
            if m not in by_n:
                ev = evaluate(
                    params, self.task, self.batch, window=self.window, passes=m,
                    schedule=self.schedule, batch_size=self.batch_size, mesh=self.mesh,
                )  # fmt: skip
                by_n[m] = {k: _finite_or_none(v) for k, v in ev.items()}
        return {"eval": by_n[self.passes], **{f"eval_N{m}": by_n[m] for m in self.eval_passes}}


def metrics_line(evals: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """`Evaluator`'s result as `metrics.jsonl` keys: `eval/{k}` and `eval_N{M}/{k}`."""
    return {f"{p}/{k}": v for p, ev in evals.items() for k, v in ev.items()}


def summary_metrics(evals: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """`Evaluator`'s result as `summary.json`'s `eval` keys: `{k}` (no `eval/` prefix) and
    `N{M}/{k}`."""
    return {(k if p == "eval" else f"{p[len('eval_'):]}/{k}"): v
            for p, ev in evals.items() for k, v in ev.items()}  # fmt: skip


def constant_answer_accuracy(task: Task, batch) -> dict[str, float]:
    """Exact-answer accuracy of the best input-independent answer on `batch`: at each answer
    position its most frequent target. The floor a model that ignores its input reaches
    through label bias alone (Rule 110's bits are not balanced after t steps), per depth as
    `acc/d={d}` and overall as `acc`; a model "near the constant answer" has learned nothing.
    """
    targets = np.asarray(batch.targets)
    on = (np.asarray(batch.loss_mask) > 0) & (np.asarray(batch.group) >= 0)
    depth, group = np.asarray(batch.depth), np.asarray(batch.group)
    guess = np.zeros(targets.shape[1], targets.dtype)
    for p in np.flatnonzero(on.any(axis=0)):
        values, counts = np.unique(targets[on[:, p], p], return_counts=True)
        guess[p] = values[np.argmax(counts)]
    wrong = on & (targets != guess[None, :])
    out: dict[str, float] = {}
    oks, ds = [], []
    for b in range(targets.shape[0]):  # one answer per (example, group)
        for g in np.unique(group[b][on[b]]):
            at = on[b] & (group[b] == g)
            oks.append(not wrong[b][at].any())
            ds.append(int(depth[b][at].max()))
    oks, ds = np.asarray(oks, bool), np.asarray(ds)
    out["acc"] = float(oks.mean()) if oks.size else math.nan
    for d in task.depths:
        sel = ds == d
        out[f"acc/d={d}"] = float(oks[sel].mean()) if sel.any() else math.nan
    return out
