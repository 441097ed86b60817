"""Shared pieces of the synthetic tasks: the `Batch` container, the `Task` base class and
the per-depth answer metric.

Conventions every task follows (see BUILD_NOTES.md, "Tasks"):
  * `targets[b, t]` is the token to predict at position t (next-token style, so the model's
    logits at t are compared with it); 0 where unused.
  * `loss_mask` is 1.0 exactly where `targets` holds an answer token.
  * an "answer" is the set of answer tokens of one example sharing a `group` id; it counts
    as correct only if every one of its tokens is predicted right (exact match).
  * `depth` labels every answer token with its answer's difficulty (0 elsewhere).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = Any  # numpy array out of the generators; jax array inside jitted code.

_TRAIN_STREAM = 0
_EVAL_STREAM = 1
# eval_batch builds its set from fixed-size chunks so that a larger eval set extends a
# smaller one (eval_batch(s, 512)[:256] == eval_batch(s, 256)).
EVAL_CHUNK = 256


@flax.struct.dataclass
class Batch:
    """One batch of examples (numpy arrays out of the generators).

    Attributes:
      tokens: int32 [B, T] model inputs.
      targets: int32 [B, T] token to predict at each position (0 where unused).
      loss_mask: float32 [B, T] 1.0 on answer tokens only.
      depth: int32 [B, T] depth label of the answer token at that position (0 elsewhere).
      group: int32 [B, T] index of the answer (within its example) the token belongs to;
        -1 elsewhere.
    """

    tokens: Array
    targets: Array
    loss_mask: Array
    depth: Array
    group: Array

    def __getitem__(self, idx) -> Batch:
        """Slices every field along the batch axis (numpy-style index)."""
        return jax.tree_util.tree_map(lambda x: x[idx], self)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)


def _concat(batches: Sequence[Batch]) -> Batch:
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *batches)


def empty_batch(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """Zero-filled field arrays (group = -1) that a generator fills in place."""
    return dict(
        tokens=np.zeros((batch_size, seq_len), np.int32),
        targets=np.zeros((batch_size, seq_len), np.int32),
        loss_mask=np.zeros((batch_size, seq_len), np.float32),
        depth=np.zeros((batch_size, seq_len), np.int32),
        group=np.full((batch_size, seq_len), -1, np.int32),
    )


def _check_seed(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return int(value)


def check_int(task: Task, field: str, lo: int, hi: int | None = None) -> int:
    """Raises ValueError naming `field` unless getattr(task, field) is an int in [lo, hi]."""
    v = getattr(task, field)
    ok = isinstance(v, int | np.integer) and not isinstance(v, bool)
    if not ok or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{type(task).__name__}.{field} must be an int {rng}, got {v!r}")
    return int(v)


def check_int_tuple(task: Task, field: str, lo: int, hi: int | None = None) -> tuple[int, ...]:
    """Like check_int for a non-empty tuple of ints; converts lists to tuples in place."""
    v = getattr(task, field)
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        v = (v,)
    if not isinstance(v, Sequence) or isinstance(v, str) or len(v) == 0:
        raise ValueError(f"{type(task).__name__}.{field} must be a non-empty tuple of ints")
    for x in v:
        ok = isinstance(x, int | np.integer) and not isinstance(x, bool)
        if not ok or x < lo or (hi is not None and x > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise ValueError(f"{type(task).__name__}.{field} entries must be ints {rng}, got {v!r}")
    v = tuple(int(x) for x in v)
    object.__setattr__(task, field, v)  # frozen dataclass: normalise lists to tuples
    return v


def knob_error(task: Task, field: str, msg: str) -> ValueError:
    return ValueError(f"{type(task).__name__}.{field}: {msg}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    """Base class of the synthetic tasks. Subclasses are frozen, keyword-only dataclasses
    whose fields are the task's knobs; they implement `_validate`, `_generate` and the
    size properties."""

    name: ClassVar[str] = "task"

    def __post_init__(self):
        self._validate()

    # ---- to implement -------------------------------------------------------------
    def _validate(self) -> None:
        """Checks the knobs; raises ValueError naming the offending field."""

    def _generate(self, rng: np.random.Generator, batch_size: int) -> Batch:
        raise NotImplementedError

    def token_names(self) -> list[str]:
        """Printable name of every token id (length vocab_size)."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def seq_len(self) -> int:
        raise NotImplementedError

    @property
    def guess_accuracy(self) -> float:
        """Exact-answer accuracy of uniform random guessing (the same at every depth)."""
        raise NotImplementedError

    # ---- read from the knobs named here (override where a task differs) ---------------
    window_knob: ClassVar[str] = "window"  # the knob that is the eviction window
    depth_knob: ClassVar[str] = ""  # a tuple knob whose distinct values are the depths

    @property
    def default_window(self) -> int:
        """Window L at which the paper evicts the KV cache for this task."""
        return getattr(self, self.window_knob)

    @property
    def depths(self) -> tuple[int, ...]:
        """Depth values the metric reports (static; pass to per_depth_metrics)."""
        if not self.depth_knob:
            raise NotImplementedError
        return tuple(sorted(set(getattr(self, self.depth_knob))))

    @property
    def chance_accuracy(self) -> dict[int, float]:
        """depth -> exact-answer accuracy of uniform random guessing."""
        return {d: self.guess_accuracy for d in self.depths}

    @property
    def answer_positions(self) -> tuple[int, ...] | None:
        """Every position where `loss_mask` can be nonzero (static, from the knobs), or None
        for "anywhere". The train step computes logits only there (`forward(positions=)`);
        `batch` and `eval_batch` check every batch against it."""
        return None

    @property
    def answer_position_names(self) -> tuple[str, ...] | None:
        """Names of the `answer_positions` (static), or None. A task that names them gets
        `acc/{name}`, the token accuracy at each, from `evaluation.evaluate`."""
        return None

    # ---- provided -----------------------------------------------------------------
    @property
    def _salt(self) -> int:
        return zlib.crc32(self.name.encode())

    def batch(self, seed: int, step: int, batch_size: int) -> Batch:
        """Training batch number `step` of the stream `seed` (deterministic in all three)."""
        seed = _check_seed("seed", seed)
        step = _check_seed("step", step)
        batch_size = _check_seed("batch_size", batch_size)
        rng = np.random.default_rng([seed, _TRAIN_STREAM, step, self._salt])
        return self._checked(self._generate(rng, batch_size))

    def _checked(self, batch: Batch) -> Batch:
        """Raises if `batch` supervises a position outside `answer_positions` (a generator
        bug would otherwise silently drop those answers from the loss)."""
        pos = self.answer_positions
        if pos is not None:
            outside = np.ones(batch.loss_mask.shape[1], bool)
            outside[list(pos)] = False
            if np.any(np.asarray(batch.loss_mask)[:, outside] != 0):
                raise ValueError(
                    f"{type(self).__name__} supervises positions outside its answer_positions"
                )
        return batch

    def eval_batch(self, seed: int, size: int) -> Batch:
        """The held-out set of `size` examples for `seed` (a stream disjoint from
        `batch`); sets of different sizes for one seed are prefixes of each other."""
        seed = _check_seed("seed", seed)
        size = _check_seed("size", size)
        chunks = []
        for c in range(max(1, -(-size // EVAL_CHUNK))):
            rng = np.random.default_rng([seed, _EVAL_STREAM, c, self._salt])
            chunks.append(self._generate(rng, EVAL_CHUNK))
        return self._checked(_concat(chunks)[:size])

    def describe(self, batch: Batch, i: int) -> str:
        """Human-readable rendering of example i: one line per window, answer tokens
        shown as `token[->target]` and a summary of the answers."""
        names = self.token_names()
        toks = np.asarray(batch.tokens[i])
        tgts = np.asarray(batch.targets[i])
        mask = np.asarray(batch.loss_mask[i]) > 0
        L = self.default_window
        lines = [f"{self.name} example {i} (T={len(toks)}, window={L})"]
        for w0 in range(0, len(toks), L):
            parts = []
            for t in range(w0, min(w0 + L, len(toks))):
                s = names[toks[t]]
                if mask[t]:
                    s += f"[->{names[tgts[t]]}]"
                parts.append(s)
            lines.append(f"  w{w0 // L}: " + " ".join(parts))
        grp = np.asarray(batch.group[i])
        dep = np.asarray(batch.depth[i])
        for g in np.unique(grp[mask]):
            sel = mask & (grp == g)
            ans = " ".join(names[x] for x in tgts[sel])
            lines.append(f"  answer {g}: depth={dep[sel][0]} -> {ans}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Metric
# ---------------------------------------------------------------------------------------


def per_depth_sums(logits: Array, batch: Batch, depths: Sequence[int]) -> dict[str, Array]:
    """Additive statistics behind `per_depth_metrics` (sum them over eval batches, then
    call `metrics_from_sums`). Jitted internally (depths static); callable inside jit.

    Returns a dict of float32 scalars: for each depth d (and overall, no suffix)
    `nll_sum/d={d}`, `tokens/d={d}` (masked answer-token count), `correct/d={d}` (exactly
    right answers), `answers/d={d}`.
    """
    return _per_depth_sums(logits, batch, tuple(depths))


@functools.partial(jax.jit, static_argnames="depths")
def _per_depth_sums(logits, batch, depths):
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(batch.targets, jnp.int32)
    mask = jnp.asarray(batch.loss_mask, jnp.float32)
    depth = jnp.asarray(batch.depth, jnp.int32)
    group = jnp.asarray(batch.group, jnp.int32)
    B, T = targets.shape

    nll = (
        jax.nn.logsumexp(logits, axis=-1)
        - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    )
    right = jnp.argmax(logits, axis=-1) == targets
    on = (mask > 0) & (group >= 0)

    # One segment per (example, group): id b*T + group; everything else goes to B*T.
    seg = jnp.where(on, jnp.arange(B, dtype=jnp.int32)[:, None] * T + group, B * T).ravel()
    nseg = B * T + 1
    n_tok = jax.ops.segment_sum(on.ravel().astype(jnp.int32), seg, nseg)[:-1]
    n_wrong = jax.ops.segment_sum((on & ~right).ravel().astype(jnp.int32), seg, nseg)[:-1]
    g_depth = jax.ops.segment_max(jnp.where(on, depth, -1).ravel(), seg, nseg)[:-1]
    is_ans = n_tok > 0
    ans_ok = is_ans & (n_wrong == 0)

    # Bucket 0 = all answers, bucket 1 + i = depths[i]; vectorised over buckets.
    d_arr = jnp.asarray(tuple(depths), jnp.int32)
    tok_in = jnp.concatenate(
        [on[..., None], on[..., None] & (depth[..., None] == d_arr)], axis=-1
    ).astype(jnp.float32)  # [B, T, 1 + D]
    ans_in = jnp.concatenate(
        [is_ans[:, None], is_ans[:, None] & (g_depth[:, None] == d_arr)], axis=-1
    ).astype(jnp.float32)  # [B * T, 1 + D]
    # Elementwise products + reductions rather than einsum: no reduced-precision matmul
    # passes on accelerators.
    s_nll = jnp.sum((nll * mask)[..., None] * tok_in, axis=(0, 1))
    s_tok = jnp.sum(mask[..., None] * tok_in, axis=(0, 1))
    s_ok = jnp.sum(ans_ok[:, None] * ans_in, axis=0)
    s_ans = jnp.sum(ans_in, axis=0)

    out = {}
    for j, suffix in enumerate([""] + [f"/d={d}" for d in depths]):
        out[f"nll_sum{suffix}"] = s_nll[j]
        out[f"tokens{suffix}"] = s_tok[j]
        out[f"correct{suffix}"] = s_ok[j]
        out[f"answers{suffix}"] = s_ans[j]
    return out


def metrics_from_sums(sums: dict[str, Array], depths: Sequence[int]) -> dict[str, Array]:
    """`loss`, `acc`, `loss/d={d}`, `acc/d={d}` from (summed) `per_depth_sums` outputs.
    Empty buckets give NaN."""
    return _metrics_from_sums(sums, tuple(depths))


@functools.partial(jax.jit, static_argnames="depths")
def _metrics_from_sums(sums, depths):
    out = {}
    for suffix in [""] + [f"/d={d}" for d in depths]:
        out[f"loss{suffix}"] = jnp.asarray(sums[f"nll_sum{suffix}"]) / jnp.asarray(
            sums[f"tokens{suffix}"]
        )
        out[f"acc{suffix}"] = jnp.asarray(sums[f"correct{suffix}"]) / jnp.asarray(
            sums[f"answers{suffix}"]
        )
    return out


def per_depth_metrics(logits: Array, batch: Batch, depths: Sequence[int]) -> dict[str, Array]:
    """Answer metrics per depth bucket.

    Args:
      logits: [B, T, V] predictions; logits[:, t] is scored against batch.targets[:, t].
      batch: the Batch the logits were computed on.
      depths: depth values to report (static under jit: pass a tuple).

    Returns:
      dict of float32 scalars: `loss` (mean masked cross-entropy over all answer tokens),
      `acc` (fraction of answers, i.e. (example, group) pairs, whose tokens are all
      argmax-right) and `loss/d={d}`, `acc/d={d}` restricted to answers of depth d (NaN if
      the batch has none). Use float(...) to get Python floats.

    Jitted internally with `depths` static, so eager calls compile once per shape; it can
    also be called inside a jitted function.
    """
    return _metrics_from_sums(_per_depth_sums(logits, batch, tuple(depths)), tuple(depths))
