"""Rule 110 cellular automaton task (docs/method.md, Tasks 1).

Layout (defaults: 4 states x 24 bits, T = 100, L = 24):

    [state 1: 24 bits] [state 2] [state 3] [state 4] [Q1 Q2 Q3 Q4]

Each state fills exactly one eviction window; the final (short) window holds only the
query tokens. At Qi the target is bit 0 (the state's first token) of state i after t
Rule-110 steps. With probe_radius = r > 0 each query asks another bit instead: bit j
(mod width) with j ~ U{-r..r} drawn per query and named by the query token (Q2@-3); at
t = 0 that probes whether every bit an answer at t = r depends on was stored (the depth
ladder's wide retrieval control). The labels of one example form a single answer (exact match of all
num_states bits; chance 1/2**num_states). depth = t, drawn per example from t_values.
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

RULE = 110
BOUNDARIES = ("periodic", "zero")


def rule110_step(cells: np.ndarray, boundary: str = "periodic") -> np.ndarray:
    """One Rule-110 update of uint8 bit arrays along the last axis.

    Cell i's neighbourhood is (cell i-1, cell i, cell i+1); new = bit (4l + 2c + r) of 110.
    `boundary`: "periodic" wraps around; "zero" treats cells beyond the ends as 0.
    """
    if boundary == "periodic":
        left = np.roll(cells, 1, axis=-1)
        right = np.roll(cells, -1, axis=-1)
    else:
        left = np.zeros_like(cells)
        left[..., 1:] = cells[..., :-1]
        right = np.zeros_like(cells)
        right[..., :-1] = cells[..., 1:]
    return (RULE >> (4 * left + 2 * cells + right)) & 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule110(Task):
    """Knobs:
    num_states: independent random states per example (one per window).
    width: bits per state = eviction window L.
    t_values: Rule-110 step counts; each example draws t uniformly from them (depth = t).
    boundary: "periodic" or "zero".
    probe_radius: 0 (ask bit 0) or r >= 1: ask bit j ~ U{-r..r} of each state, the query
      token naming (state, j); 2r + 1 <= width.
    """

    name = "rule110"
    window_knob = "width"
    depth_knob = "t_values"
    num_states: int = 4
    width: int = 24
    t_values: tuple[int, ...] = (32,)
    boundary: str = "periodic"
    probe_radius: int = 0

    # token ids: 0, 1 = bits; 2 + i * (2r + 1) + (j + r) = query token Q(i+1) asking bit j
    # (r = probe_radius; at r = 0 that is 2 + i, asking bit 0)
    def _validate(self):
        check_int(self, "num_states", 1)
        check_int(self, "width", 3)
        check_int_tuple(self, "t_values", 0, 4096)
        r = check_int(self, "probe_radius", 0)
        if 2 * r + 1 > self.width:
            raise knob_error(
                self, "probe_radius", f"2 * {r} + 1 > width {self.width}: offsets would repeat"
            )
        if self.boundary not in BOUNDARIES:
            raise knob_error(
                self, "boundary", f"must be one of {BOUNDARIES}, got {self.boundary!r}"
            )

    @property
    def offsets(self) -> int:
        """How many bits a query may ask (2r + 1)."""
        return 2 * self.probe_radius + 1

    @property
    def vocab_size(self) -> int:
        return 2 + self.num_states * self.offsets

    @property
    def answer_positions(self) -> tuple[int, ...]:
        q0 = self.num_states * self.width
        return tuple(range(q0, self.seq_len))

    @property
    def answer_position_names(self) -> tuple[str, ...]:
        # Per-query accuracy: which stored states the model computes on (a model may
        # solve Q4, read from the freshest fast weights, and not Q1).
        return tuple(f"Q{i + 1}" for i in range(self.num_states))

    @property
    def seq_len(self) -> int:
        return self.num_states * self.width + self.num_states

    @property
    def guess_accuracy(self) -> float:
        return 0.5**self.num_states

    def token_names(self) -> list[str]:
        r = self.probe_radius
        if r == 0:
            return ["0", "1"] + [f"Q{i + 1}" for i in range(self.num_states)]
        return ["0", "1"] + [
            f"Q{i + 1}@{j:+d}" for i in range(self.num_states) for j in range(-r, r + 1)
        ]

    def _generate(self, rng: np.random.Generator, batch_size: int) -> Batch:
        B, n, w = batch_size, self.num_states, self.width
        t_vals = np.asarray(self.t_values)
        t = t_vals[rng.integers(0, len(t_vals), size=B)]  # [B]
        states = rng.integers(0, 2, size=(B, n, w), dtype=np.uint8)

        r = self.probe_radius
        # The bit each query asks (drawn only when probing, so that r = 0 keeps the stream).
        j = rng.integers(-r, r + 1, size=(B, n)) if r else np.zeros((B, n), np.int64)
        rows, cols = np.arange(B)[:, None], np.arange(n)[None, :]
        bit = j % w  # [B, n]

        cells = states.copy()
        final = np.where((t == 0)[:, None], cells[rows, cols, bit], 0).astype(np.uint8)
        for step in range(1, int(t.max(initial=0)) + 1):
            cells = rule110_step(cells, self.boundary)
            hit = t == step
            final[hit] = cells[rows, cols, bit][hit]

        out = empty_batch(B, self.seq_len)
        q0 = n * w
        out["tokens"][:, :q0] = states.reshape(B, n * w)
        out["tokens"][:, q0:] = 2 + np.arange(n) * self.offsets + (j + r)
        out["targets"][:, q0:] = final
        out["loss_mask"][:, q0:] = 1.0
        out["depth"][:, q0:] = t[:, None]
        out["group"][:, q0:] = 0
        return Batch(**out)

    def describe(self, batch: Batch, i: int) -> str:
        toks = np.asarray(batch.tokens[i])
        tgts = np.asarray(batch.targets[i])
        n, w = self.num_states, self.width
        t = int(np.asarray(batch.depth[i])[n * w])
        lines = [f"rule110 example {i}: t={t}, boundary={self.boundary}, window={w}"]
        names = self.token_names()
        for s in range(n):
            bits = "".join(str(b) for b in toks[s * w : (s + 1) * w])
            q = names[toks[n * w + s]]
            asked = "bit0" if self.probe_radius == 0 else f"bit{q.partition('@')[2]}"
            lines.append(f"  state {s + 1}: {bits}  -> {asked} after t: {tgts[n * w + s]}")
        qs = " ".join(f"{names[toks[n * w + s]]}[->{tgts[n * w + s]}]" for s in range(n))
        lines.append(f"  queries: {qs}")
        return "\n".join(lines)
