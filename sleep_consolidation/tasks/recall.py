"""Multi-query associative recall after eviction.

Layout (defaults: T = 64, L = 32):

    [PAD ... PAD  k1 v1 k2 v2 ... kn vn]   (window 1: the n pairs, left-padded)
    [PAD ... PAD  q1 q2 ... q8]            (window 2: query keys, left-padded)

n is drawn per example from num_pairs_values (depth = n); keys are distinct within an
example, values are drawn independently (repeats allowed). Each query token is a key of
the example (uniform, with replacement); its target is that key's value. Each query is one
answer (group = query index). The pairs are fully evicted before the first query.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sleep_consolidation.tasks.base import (
    Batch,
    Task,
    check_int,
    check_int_tuple,
    empty_batch,
    knob_error,
)

PAD = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recall(Task):
    """Knobs:
    num_pairs_values: pair counts n; each example draws one uniformly (depth = n).
    num_keys / num_values: sizes of the key and value alphabets.
    window: eviction window L; the pairs fill the first window (2n <= window), the
      queries the second (num_queries <= window); seq_len = 2 * window.
    num_queries: queries per example.
    """

    name = "recall"
    depth_knob = "num_pairs_values"
    num_pairs_values: tuple[int, ...] = (4, 8, 16)
    num_keys: int = 64
    num_values: int = 64
    window: int = 32
    num_queries: int = 8

    def _validate(self):
        ns = check_int_tuple(self, "num_pairs_values", 1)
        check_int(self, "num_keys", 1)
        check_int(self, "num_values", 1)
        check_int(self, "window", 2)
        check_int(self, "num_queries", 1, self.window)
        if self.num_keys < max(ns):
            raise knob_error(
                self,
                "num_keys",
                f"{self.num_keys} < max(num_pairs_values) = {max(ns)}: keys must be distinct",
            )
        if 2 * max(ns) > self.window:
            raise knob_error(
                self,
                "window",
                f"{self.window} < 2 * max(num_pairs_values) = "
                f"{2 * max(ns)}: the pairs must fit in the first window",
            )

    # token ids: PAD=0, keys 1..num_keys, values num_keys+1..num_keys+num_values
    @property
    def vocab_size(self) -> int:
        return 1 + self.num_keys + self.num_values

    @property
    def answer_positions(self) -> tuple[int, ...]:
        return tuple(range(2 * self.window - self.num_queries, 2 * self.window))

    @property
    def seq_len(self) -> int:
        return 2 * self.window

    @property
    def guess_accuracy(self) -> float:
        return 1.0 / self.num_values

    def token_names(self) -> list[str]:
        return (
            ["_"]
            + [f"k{i}" for i in range(self.num_keys)]
            + [f"v{i}" for i in range(self.num_values)]
        )

    def _generate(self, rng: np.random.Generator, batch_size: int) -> Batch:
        B, W, Q = batch_size, self.window, self.num_queries
        N = max(self.num_pairs_values)
        rows = np.arange(B)[:, None]
        ns = np.asarray(self.num_pairs_values)
        n = ns[rng.integers(0, len(ns), size=B)]

        keys = 1 + np.argsort(rng.random((B, self.num_keys)), axis=1)[:, :N]  # distinct
        vals = 1 + self.num_keys + rng.integers(0, self.num_values, size=(B, N))
        # Pair i of example b sits at pair slot N - n + i (left padding); slots < N - n PAD.
        slot = np.arange(N)[None, :] - (N - n)[:, None]  # pair index shown in each slot
        used = slot >= 0
        src = np.maximum(slot, 0)
        pairs = np.stack([keys[rows, src], vals[rows, src]], axis=-1)  # [B, N, 2]
        pairs[~used] = PAD

        qi = (rng.random((B, Q)) * n[:, None]).astype(np.int64)  # uniform over present keys

        out = empty_batch(B, self.seq_len)
        out["tokens"][:, W - 2 * N : W] = pairs.reshape(B, 2 * N)
        qpos = slice(2 * W - Q, 2 * W)
        out["tokens"][:, qpos] = keys[rows, qi]
        out["targets"][:, qpos] = vals[rows, qi]
        out["loss_mask"][:, qpos] = 1.0
        out["depth"][:, qpos] = n[:, None]
        out["group"][:, qpos] = np.arange(Q)
        return Batch(**out)
