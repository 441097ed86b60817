"""GSM-Infinite-style modular arithmetic (docs/method.md, Tasks 3): a from-scratch,
small-vocabulary analogue with the paper's knobs (number of operations, distractors,
question first, window smaller than the problem).

Layout (defaults: T = 192, L = 48):

    [PAD]* ? v_q ;  stmt ; stmt ; ... stmt ;  ANS        (ANS's target: value of v_q)

Statements are "v = c ;" (4 tokens) or "v = a op b ;" (6 tokens), op in {+, -, *} mod p.
Every variable is assigned exactly once and the definitions are acyclic. The value of v_q
needs exactly `ops` operations (a chain of `ops` operation statements, each using the
previous result and either a fresh constant variable or, with probability 1/4, an earlier
variable of the chain). Distractor statements (half constants, half operations whose
operands are any earlier-generated variable, relevant ones included) fill the rest of the
sequence; at most 3 PAD tokens are left over at the start. Statement order: `order` =
"shuffled" (uniformly random) or "topological" (random, but every operation after its
operands). One answer per example (group 0), depth = ops.
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

PAD, QUESTION, SEMI, ASSIGN, ANSWER, PLUS, MINUS, TIMES = range(8)
_FIRST_VALUE = 8
ORDERS = ("shuffled", "topological")
REUSE_PROB = 0.25  # chance that an operation's second operand is an earlier chain variable
DISTRACTOR_OP_PROB = 0.5  # chance that a distractor statement is an operation


def apply_op(op, a, b, p):
    """op: 0 '+', 1 '-', 2 '*' (arrays or ints), modulo p."""
    return np.where(op == 0, a + b, np.where(op == 1, a - b, a * b)) % p


@dataclasses.dataclass(frozen=True, kw_only=True)
class GSM(Task):
    """Knobs:
    modulus: p, all arithmetic is mod p (a small prime is best); values are tokens.
    num_vars: size of the variable-name pool (must cover the longest problem).
    ops_values: operation counts; each example draws one uniformly (depth = ops).
    seq_len: fixed sequence length; distractors fill it.
    window: eviction window L (< seq_len, so the question is evicted before the answer).
    order: "shuffled" or "topological" statement order.
    """

    name = "gsm"
    depth_knob = "ops_values"
    modulus: int = 11
    num_vars: int = 64
    ops_values: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    seq_len: int = 192
    window: int = 48
    order: str = "shuffled"

    def _validate(self):
        check_int(self, "modulus", 2)
        ops = check_int_tuple(self, "ops_values", 1, 256)
        check_int(self, "seq_len", 1)
        need_len = 4 + 10 * max(ops) + 4  # question + ANS + longest chain (all fresh leaves)
        if self.seq_len < need_len:
            raise knob_error(
                self, "seq_len", f"{self.seq_len} < {need_len} tokens needed for ops={max(ops)}"
            )
        check_int(self, "window", 1, self.seq_len - 1)
        check_int(self, "num_vars", 1)
        if self.num_vars < self.max_statements_used:
            raise knob_error(
                self,
                "num_vars",
                f"{self.num_vars} < {self.max_statements_used}"
                " variables a problem can use at this seq_len",
            )
        if self.order not in ORDERS:
            raise knob_error(self, "order", f"must be one of {ORDERS}, got {self.order!r}")

    @property
    def max_statements_used(self) -> int:
        # m ops + l leaves + distractors filling (T - 4 - 6m - 4l) // 4 = (T - 4 - 2m) // 4.
        return max(max((self.seq_len - 4 - 2 * m) // 4, 2 * m + 1) for m in self.ops_values)

    @property
    def _max_core(self) -> int:
        return 2 * max(self.ops_values) + 1

    @property
    def _max_distractors(self) -> int:
        return (self.seq_len - 4 - (6 * min(self.ops_values) + 8)) // 4

    # token ids: see module constants; value c -> 8 + c; variable i -> 8 + p + i
    def value_token(self, c):
        return _FIRST_VALUE + c

    def var_token(self, i):
        return _FIRST_VALUE + self.modulus + i

    @property
    def vocab_size(self) -> int:
        return _FIRST_VALUE + self.modulus + self.num_vars

    @property
    def answer_positions(self) -> tuple[int, ...]:
        return (self.seq_len - 1,)

    @property
    def guess_accuracy(self) -> float:
        return 1.0 / self.modulus

    def token_names(self) -> list[str]:
        return (
            ["_", "?", ";", "=", "ANS", "+", "-", "*"]
            + [str(c) for c in range(self.modulus)]
            + [f"x{i}" for i in range(self.num_vars)]
        )

    def _generate(self, rng: np.random.Generator, batch_size: int) -> Batch:
        B, p, T = batch_size, self.modulus, self.seq_len
        M, C, D = max(self.ops_values), self._max_core, self._max_distractors
        S = C + D
        rows = np.arange(B)
        ops_vals = np.asarray(self.ops_values)
        m = ops_vals[rng.integers(0, len(ops_vals), size=B)]

        # Statement table in generation order (a topological order). kind: -1 unused,
        # 0 "v = c", 1 "v = a op b". Statement s defines variable s.
        kind = np.full((B, S), -1, np.int64)
        const = rng.integers(0, p, size=(B, S))
        opr = rng.integers(0, 3, size=(B, S))
        a = np.zeros((B, S), np.int64)
        b = np.zeros((B, S), np.int64)
        val = np.zeros((B, S), np.int64)

        # --- the relevant chain: op 0 = leaf0 op leaf1, then op j = (prev, other) ---
        kind[:, 0:2] = 0
        val[:, 0:2] = const[:, 0:2]
        kind[:, 2] = 1
        a[:, 2], b[:, 2] = 0, 1
        val[:, 2] = apply_op(opr[:, 2], val[:, 0], val[:, 1], p)
        prev = np.full(B, 2)
        cnt = np.full(B, 3)
        for j in range(1, M):
            act = j < m
            fresh = rng.random(B) >= REUSE_PROB
            r = act & fresh
            kind[rows[r], cnt[r]] = 0  # fresh constant leaf at index cnt
            val[rows[r], cnt[r]] = const[rows[r], cnt[r]]
            other = np.where(fresh, cnt, (rng.random(B) * cnt).astype(np.int64))
            at = cnt + fresh
            swap = rng.random(B) < 0.5
            x, y = np.where(swap, other, prev), np.where(swap, prev, other)
            ra, ia = rows[act], at[act]
            kind[ra, ia] = 1
            a[ra, ia], b[ra, ia] = x[act], y[act]
            val[ra, ia] = apply_op(opr[ra, ia], val[ra, x[act]], val[ra, y[act]], p)
            prev = np.where(act, at, prev)
            cnt = np.where(act, at + 1, cnt)
        target, n_core = prev, cnt
        answer = val[rows, target]

        # --- distractors: greedy fill of the token budget ---
        budget = T - 4 - (6 * m + 4 * (n_core - m))
        dkind = (rng.random((B, D)) < DISTRACTOR_OP_PROB).astype(np.int64)
        used = np.cumsum(4 + 2 * dkind, axis=1)
        nd = np.sum(used <= budget[:, None], axis=1)
        left = budget - np.where(nd > 0, used[rows, np.maximum(nd - 1, 0)], 0)
        fix = (left >= 4) & (nd < D)  # one more constant fits
        dkind[rows[fix], nd[fix]] = 0
        nd = nd + fix
        dcols = n_core[:, None] + np.arange(D)
        dvalid = np.arange(D)[None, :] < nd[:, None]
        kind[rows[:, None].repeat(D, 1)[dvalid], dcols[dvalid]] = dkind[dvalid]
        n_stmt = n_core + nd
        valid = np.arange(S)[None, :] < n_stmt[:, None]
        is_dist = valid & (np.arange(S)[None, :] >= n_core[:, None])

        # --- display order: disp[b, q] = statement shown at position q ---
        disp = np.argsort(np.where(valid, rng.random((B, S)), np.inf), axis=1)
        if self.order == "topological":
            core_pos = disp < n_core[:, None]
            disp = np.where(core_pos, np.cumsum(core_pos, axis=1) - 1, disp)
            # Position 0 must hold a constant (a distractor op there has no operand).
            first_const = np.argmax(kind[rows[:, None], disp] == 0, axis=1)
            d0 = disp[:, 0].copy()
            disp[:, 0] = disp[rows, first_const]
            disp[rows, first_const] = d0
        pos_of = np.empty_like(disp)
        pos_of[rows[:, None], disp] = np.arange(S)[None, :]

        # Distractor operation operands: shuffled -> any earlier-generated statement;
        # topological -> any statement shown earlier.
        u1, u2 = rng.random((B, S)), rng.random((B, S))
        if self.order == "shuffled":
            lim = np.arange(S)[None, :]
            da, db = (u1 * lim).astype(np.int64), (u2 * lim).astype(np.int64)
        else:
            lim = pos_of
            da = disp[rows[:, None], (u1 * lim).astype(np.int64)]
            db = disp[rows[:, None], (u2 * lim).astype(np.int64)]
        a = np.where(is_dist, da, a)
        b = np.where(is_dist, db, b)

        # --- render ---
        names = np.argsort(rng.random((B, self.num_vars)), axis=1)  # var s -> pool id
        names = np.concatenate([names, np.zeros((B, S), names.dtype)], axis=1)
        vt = lambda idx: self.var_token(names[rows[:, None], idx])
        is_op = kind == 1
        stoks = np.zeros((B, S, 6), np.int64)
        stoks[..., 0] = vt(np.arange(S)[None, :].repeat(B, 0))
        stoks[..., 1] = ASSIGN
        stoks[..., 2] = np.where(is_op, vt(a), self.value_token(const))
        stoks[..., 3] = np.where(is_op, PLUS + opr, SEMI)
        stoks[..., 4] = np.where(is_op, vt(b), PAD)
        stoks[..., 5] = np.where(is_op, SEMI, PAD)
        slen = np.where(valid, 4 + 2 * is_op, 0)

        dl = slen[rows[:, None], disp]  # lengths in display order
        total = dl.sum(axis=1)
        pad = T - 4 - total
        start = pad[:, None] + 3 + np.cumsum(dl, axis=1) - dl  # [B, S] display positions
        out = empty_batch(B, T)
        tok = out["tokens"]
        tok[rows, pad] = QUESTION
        tok[rows, pad + 1] = vt(target[:, None])[:, 0]
        tok[rows, pad + 2] = SEMI
        shown = stoks[rows[:, None], disp]  # [B, S, 6]
        k6 = np.arange(6)
        flat = (rows[:, None, None] * T + start[..., None] + k6).ravel()
        w = (k6 < dl[..., None]).ravel()
        tok.reshape(-1)[flat[w]] = shown.reshape(-1)[w]
        tok[:, T - 1] = ANSWER
        out["targets"][:, T - 1] = self.value_token(answer)
        out["loss_mask"][:, T - 1] = 1.0
        out["depth"][:, T - 1] = m
        out["group"][:, T - 1] = 0
        return Batch(**out)

    def describe(self, batch: Batch, i: int) -> str:
        names = self.token_names()
        toks = np.asarray(batch.tokens[i])
        ans = names[int(np.asarray(batch.targets[i])[-1])]
        ops = int(np.asarray(batch.depth[i])[-1])
        body = " ".join(names[x] for x in toks if x != PAD)
        text = body.replace(" ;", ";").replace("; ", ";\n    ")
        return (
            f"gsm example {i}: ops={ops}, mod {self.modulus}, answer={ans}, "
            f"T={len(toks)}, window={self.window}\n    {text}"
        )
