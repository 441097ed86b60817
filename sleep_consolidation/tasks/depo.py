"""Depo k-hop retrieval on a directed cycle (docs/method.md, Tasks 2; after "Physics of
Language Models" part 4.1).

Layout (defaults: T = 360, L = 75):

    [PAD ... PAD  src dst  src dst ...]  (graph region, graph_tokens = 300, left-padded)
    [H_k  x1 x2  ?  y1 y2] x num_queries (query region, 6 tokens per query)

An example has n nodes (n uniform in [min_nodes, max_nodes]) with distinct random names of
`name_tokens` symbols, arranged in a random directed cycle; its n edges "src dst" are listed
in random order. Query "H_k x ?" asks for the node k hops after x; the answer name y is
supervised with teacher forcing (target at "?" is y1, at y1 it is y2, ...). Each query is
one answer (group = query index) with depth k ~ U[1, max_hops]. The graph region is a
whole number of windows, so it is fully evicted before the first query.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sleep_consolidation.tasks.base import Batch, Task, check_int, empty_batch, knob_error

PAD = 0
_MAX_NAME_SPACE = 1 << 16  # alphabet**name_tokens; names are drawn by a [B, space] argsort


@dataclasses.dataclass(frozen=True, kw_only=True)
class Depo(Task):
    """Knobs:
    max_nodes: largest cycle (the graph region must hold 2*name_tokens*max_nodes tokens).
    min_nodes: smallest cycle; None -> max(2, max_nodes // 2).
    name_tokens: symbols per node name.
    alphabet: number of name symbols.
    num_queries: queries per example.
    max_hops: k ~ U[1, max_hops]; one hop token H_k per k.
    window: eviction window L; graph_tokens must be a multiple of it and the queries must
      fit in one window.
    graph_tokens: length of the left-padded graph region.
    """

    name = "depo"
    max_nodes: int = 75
    min_nodes: int | None = None
    name_tokens: int = 2
    alphabet: int = 26
    num_queries: int = 10
    max_hops: int = 16
    window: int = 75
    graph_tokens: int = 300

    def _validate(self):
        check_int(self, "max_nodes", 2)
        if self.min_nodes is not None:
            check_int(self, "min_nodes", 2, self.max_nodes)
        check_int(self, "name_tokens", 1)
        check_int(self, "alphabet", 2)
        check_int(self, "num_queries", 1)
        check_int(self, "max_hops", 1)
        check_int(self, "window", 1)
        check_int(self, "graph_tokens", 1)
        space = self.alphabet**self.name_tokens
        if space < self.max_nodes:
            raise knob_error(
                self,
                "alphabet",
                f"alphabet**name_tokens = {space} < max_nodes"
                f" = {self.max_nodes}: not enough distinct names",
            )
        if space > _MAX_NAME_SPACE:
            raise knob_error(
                self, "alphabet", f"alphabet**name_tokens = {space} exceeds {_MAX_NAME_SPACE}"
            )
        need = 2 * self.name_tokens * self.max_nodes
        if self.graph_tokens < need:
            raise knob_error(
                self,
                "graph_tokens",
                f"{self.graph_tokens} < {need} tokens needed for max_nodes edges",
            )
        if self.graph_tokens % self.window:
            raise knob_error(
                self,
                "window",
                f"graph_tokens={self.graph_tokens} must be a "
                f"multiple of window={self.window} so the graph is evicted "
                "before the first query",
            )
        if self.num_queries * self.query_len > self.window:
            raise knob_error(
                self,
                "window",
                f"the {self.num_queries} queries "
                f"({self.num_queries * self.query_len} tokens) must fit in "
                f"one window ({self.window})",
            )

    # token ids: PAD=0, symbols 1..alphabet, "?" = alphabet+1, H_k = alphabet+1+k
    @property
    def qmark(self) -> int:
        return self.alphabet + 1

    def hop_token(self, k):
        return self.alphabet + 1 + k

    @property
    def query_len(self) -> int:
        return 2 + 2 * self.name_tokens

    @property
    def n_min(self) -> int:
        return self.min_nodes if self.min_nodes is not None else max(2, self.max_nodes // 2)

    @property
    def vocab_size(self) -> int:
        return self.alphabet + 2 + self.max_hops

    @property
    def answer_positions(self) -> tuple[int, ...]:
        G, ql, nt = self.graph_tokens, self.query_len, self.name_tokens
        return tuple(G + q * ql + 1 + nt + i for q in range(self.num_queries) for i in range(nt))

    @property
    def seq_len(self) -> int:
        return self.graph_tokens + self.num_queries * self.query_len

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(range(1, self.max_hops + 1))

    @property
    def guess_accuracy(self) -> float:
        return 1.0 / self.alphabet**self.name_tokens

    def token_names(self) -> list[str]:
        if self.alphabet <= 26:
            syms = [chr(ord("a") + i) for i in range(self.alphabet)]
        else:
            syms = [f"s{i}" for i in range(self.alphabet)]
        return ["_"] + syms + ["?"] + [f"H{k}" for k in range(1, self.max_hops + 1)]

    def _generate(self, rng: np.random.Generator, batch_size: int) -> Batch:
        B, N, nt, A = batch_size, self.max_nodes, self.name_tokens, self.alphabet
        Q, ql, G = self.num_queries, self.query_len, self.graph_tokens
        bidx = np.arange(B)[:, None]

        n = rng.integers(self.n_min, N + 1, size=B)  # [B] nodes per example
        # Node j of example b has name id ids[b, j] (distinct); node j -> node (j+1) % n.
        ids = np.argsort(rng.random((B, A**nt)), axis=1)[:, :N]
        powers = A ** np.arange(nt - 1, -1, -1)
        names = (1 + (ids[..., None] // powers) % A).astype(np.int32)  # [B, N, nt]

        j = np.arange(N)
        succ = (j[None, :] + 1) % n[:, None]  # [B, N]
        edges = np.concatenate([names, names[bidx, succ]], axis=-1)  # [B, N, 2nt]
        # Random edge order; unused edges (j >= n) sort first and become left padding.
        keys = np.where(j[None, :] < n[:, None], rng.random((B, N)), -1.0)
        edges = edges[bidx, np.argsort(keys, axis=1)]
        edges[(j[None, :] < (N - n)[:, None])] = PAD

        start = (rng.random((B, Q)) * n[:, None]).astype(np.int64)  # uniform over nodes
        k = rng.integers(1, self.max_hops + 1, size=(B, Q))
        dest = (start + k) % n[:, None]
        queries = np.concatenate(
            [
                self.hop_token(k)[..., None],
                names[bidx, start],
                np.full((B, Q, 1), self.qmark),
                names[bidx, dest],
            ],
            axis=-1,
        )  # [B, Q, ql]

        out = empty_batch(B, self.seq_len)
        out["tokens"][:, G - 2 * nt * N : G] = edges.reshape(B, 2 * nt * N)
        out["tokens"][:, G:] = queries.reshape(B, Q * ql)
        # Answer positions: "?" and the first nt-1 answer tokens, predicting y1..y_nt.
        pos = G + np.arange(Q)[:, None] * ql + 1 + nt + np.arange(nt)[None, :]  # [Q, nt]
        out["targets"][:, pos] = names[bidx, dest]
        out["loss_mask"][:, pos] = 1.0
        out["depth"][:, pos] = k[..., None]
        out["group"][:, pos] = np.arange(Q)[:, None]
        return Batch(**out)

    def describe(self, batch: Batch, i: int) -> str:
        names = self.token_names()
        toks = np.asarray(batch.tokens[i])
        nt, G, ql = self.name_tokens, self.graph_tokens, self.query_len
        graph = toks[:G][toks[:G] != PAD].reshape(-1, 2 * nt)
        nm = lambda seq: "".join(names[x] for x in seq)
        lines = [f"depo example {i}: {len(graph)} nodes, T={len(toks)}, window={self.window}"]
        lines.append("  edges: " + ", ".join(f"{nm(e[:nt])}->{nm(e[nt:])}" for e in graph))
        for q in range(self.num_queries):
            s = toks[G + q * ql : G + (q + 1) * ql]
            lines.append(f"  query {q}: {names[s[0]]} {nm(s[1 : 1 + nt])} ? -> {nm(s[2 + nt :])}")
        return "\n".join(lines)
