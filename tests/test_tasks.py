"""Tests of the task generators and the per-depth metric (sleep_consolidation.tasks).

Answers are recomputed independently from the rendered tokens with plain Python."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from sleep_consolidation.tasks import (
    TASKS,
    Batch,
    make_task,
    metrics_from_sums,
    per_depth_metrics,
    per_depth_sums,
)
from sleep_consolidation.tasks import depo as depo_mod
from sleep_consolidation.tasks import gsm as gsm_mod

# (task name, knobs): the paper defaults plus small / unusual variants.
CONFIGS = [
    ("rule110", {}),
    ("rule110", dict(t_values=(0, 1, 4, 7), boundary="zero", num_states=3, width=10)),
    ("depo", {}),
    (
        "depo",
        dict(
            max_nodes=5,
            min_nodes=3,
            name_tokens=1,
            alphabet=6,
            num_queries=2,
            max_hops=9,
            window=10,
            graph_tokens=20,
        ),
    ),
    (
        "depo",
        dict(name_tokens=3, alphabet=5, max_nodes=20, graph_tokens=120, window=40, num_queries=4),
    ),
    ("gsm", {}),
    ("gsm", dict(order="topological")),
    ("gsm", dict(modulus=5, ops_values=(3,), seq_len=64, window=16, num_vars=20)),
    ("recall", {}),
    ("recall", dict(num_pairs_values=(1, 3), num_keys=3, num_values=2, window=8, num_queries=8)),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)]


@pytest.fixture(params=CONFIGS, ids=IDS)
def task(request):
    name, knobs = request.param
    return make_task(name, **knobs)


def assert_batch_equal(x: Batch, y: Batch):
    for f in ("tokens", "targets", "loss_mask", "depth", "group"):
        np.testing.assert_array_equal(getattr(x, f), getattr(y, f))


# ---------------------------------------------------------------------------------------
# Registry and knobs
# ---------------------------------------------------------------------------------------


def test_registry():
    assert TASKS == ("rule110", "depo", "gsm", "recall")
    for name in TASKS:
        t = make_task(name)
        assert t.name == name
        hash(t)  # frozen + hashable: usable as a static argument
    with pytest.raises(ValueError, match="known tasks: rule110, depo, gsm, recall"):
        make_task("nope")
    with pytest.raises(ValueError, match="'bogus'"):
        make_task("rule110", bogus=3)
    assert make_task("rule110", t_values=[4, 8]).t_values == (4, 8)


@pytest.mark.parametrize(
    "name,knobs,field",
    [
        ("rule110", dict(num_states=0), "num_states"),
        ("rule110", dict(width=2), "width"),
        ("rule110", dict(t_values=()), "t_values"),
        ("rule110", dict(t_values=(4, -1)), "t_values"),
        ("rule110", dict(t_values=(2.5,)), "t_values"),
        ("rule110", dict(boundary="open"), "boundary"),
        ("depo", dict(graph_tokens=200), "graph_tokens"),
        ("depo", dict(alphabet=8), "alphabet"),  # 64 names < 75 nodes
        ("depo", dict(min_nodes=80), "min_nodes"),
        ("depo", dict(window=70), "window"),  # 300 % 70 != 0
        ("depo", dict(window=50), "window"),  # queries (60 tokens) exceed one window
        ("depo", dict(max_hops=0), "max_hops"),
        ("depo", dict(num_queries=True), "num_queries"),
        ("gsm", dict(modulus=1), "modulus"),
        ("gsm", dict(num_vars=24), "num_vars"),
        ("gsm", dict(seq_len=60), "seq_len"),
        ("gsm", dict(window=192), "window"),
        ("gsm", dict(ops_values=(0, 2)), "ops_values"),
        ("gsm", dict(order="random"), "order"),
        ("recall", dict(window=30), "window"),
        ("recall", dict(num_keys=8), "num_keys"),
        ("recall", dict(num_queries=33), "num_queries"),
        ("recall", dict(num_values=0), "num_values"),
    ],
)
def test_bad_knobs(name, knobs, field):
    with pytest.raises(ValueError, match=field):
        make_task(name, **knobs)


def test_bad_seed_step():
    t = make_task("recall")
    with pytest.raises(ValueError):
        t.batch(-1, 0, 4)
    with pytest.raises(ValueError):
        t.batch(0, 1.5, 4)


# ---------------------------------------------------------------------------------------
# Generic properties of every task
# ---------------------------------------------------------------------------------------


def test_determinism(task):
    a = task.batch(3, 7, 16)
    assert_batch_equal(a, task.batch(3, 7, 16))
    assert not np.array_equal(a.tokens, task.batch(3, 8, 16).tokens)
    assert not np.array_equal(a.tokens, task.batch(4, 7, 16).tokens)
    e = task.eval_batch(3, 300)
    assert_batch_equal(e, task.eval_batch(3, 300))
    assert_batch_equal(e[:40], task.eval_batch(3, 40))  # sizes nest
    assert not np.array_equal(e.tokens[:16], a.tokens)
    assert not np.array_equal(e.tokens[:16], task.batch(3, 0, 16).tokens)


def test_shapes_dtypes_vocab(task):
    b = task.batch(0, 0, 32)
    T = task.seq_len
    for f, dt in [
        ("tokens", np.int32),
        ("targets", np.int32),
        ("loss_mask", np.float32),
        ("depth", np.int32),
        ("group", np.int32),
    ]:
        x = getattr(b, f)
        assert isinstance(x, np.ndarray), f
        assert x.shape == (32, T) and x.dtype == dt, (f, x.shape, x.dtype)
    assert 0 <= b.tokens.min() and b.tokens.max() < task.vocab_size
    assert 0 <= b.targets.min() and b.targets.max() < task.vocab_size
    assert task.eval_batch(0, 5).tokens.shape == (5, T)
    assert set(task.chance_accuracy) == set(task.depths)
    assert all(0 < c < 1 for c in task.chance_accuracy.values())


def test_labels_consistent(task):
    b = task.batch(1, 2, 64)
    m = b.loss_mask
    on = m > 0
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert np.all((b.group >= 0) == on)
    assert np.all(b.depth[~on] == 0) and np.all(b.targets[~on] == 0)
    assert set(np.unique(b.depth[on])) <= set(task.depths)
    for i in range(b.tokens.shape[0]):
        groups = b.group[i][on[i]]
        assert on[i].any()
        assert set(groups) == set(range(groups.max() + 1))  # ids 0..G-1
        for g in set(groups):
            assert len(set(b.depth[i][b.group[i] == g])) == 1  # one depth per answer


def test_final_window(task):
    """At the default window every answer sits in the final window; for rule110, depo and
    recall that window holds no context token (the context has been evicted)."""
    T, L = task.seq_len, task.default_window
    last = ((T - 1) // L) * L
    b = task.batch(0, 1, 64)
    pos = np.nonzero(b.loss_mask.any(axis=0))[0]
    assert pos.min() >= last
    if task.name == "rule110":
        assert last == task.num_states * task.width
        assert np.all(b.tokens[:, last:] >= 2)  # query tokens only
    elif task.name == "depo":
        assert last == task.graph_tokens
        assert np.all(b.tokens[:, last:] != depo_mod.PAD)
    elif task.name == "recall":
        assert last == task.window
        assert np.all(b.tokens[:, last:] <= task.num_keys)  # PAD or query keys
    elif task.name == "gsm":
        assert last > 0  # the problem spans more than one window
        q = np.argmax(b.tokens == gsm_mod.QUESTION, axis=1)
        assert np.all(q + 2 < L)  # the question sits in the first window


def test_depth_coverage():
    b = make_task("depo").batch(0, 0, 64)
    assert set(np.unique(b.depth[b.loss_mask > 0])) == set(range(1, 17))
    b = make_task("rule110", t_values=(4, 8, 12, 16)).batch(0, 0, 256)
    assert set(np.unique(b.depth[b.loss_mask > 0])) == {4, 8, 12, 16}
    b = make_task("gsm").batch(0, 0, 256)
    assert set(np.unique(b.depth[b.loss_mask > 0])) == set(range(1, 9))


# ---------------------------------------------------------------------------------------
# Answers recomputed independently
# ---------------------------------------------------------------------------------------

RULE110_TABLE = {
    (1, 1, 1): 0,
    (1, 1, 0): 1,
    (1, 0, 1): 1,
    (1, 0, 0): 0,
    (0, 1, 1): 1,
    (0, 1, 0): 1,
    (0, 0, 1): 1,
    (0, 0, 0): 0,
}


def rule110_python(cells, t, periodic):
    cells = [int(c) for c in cells]
    w = len(cells)
    for _ in range(t):
        if periodic:
            padded = [cells[-1]] + cells + [cells[0]]
        else:
            padded = [0] + cells + [0]
        cells = [RULE110_TABLE[tuple(padded[i : i + 3])] for i in range(w)]
    return cells


def test_rule110_known_pattern():
    # A single 1 grows leftwards under Rule 110: ...0001 -> ...0011 -> ...0111 -> ...1101
    cells = [0] * 8 + [1] + [0] * 3
    assert rule110_python(cells, 1, True)[7:9] == [1, 1]
    assert rule110_python(cells, 3, True)[5:9] == [1, 1, 0, 1]
    from sleep_consolidation.tasks import rule110_step

    x = np.array(cells, np.uint8)
    for t in range(1, 6):
        x = rule110_step(x)
        assert list(x) == rule110_python(cells, t, True)


@pytest.mark.parametrize(
    "knobs", [dict(t_values=(32,)), dict(t_values=(0, 3, 9), boundary="zero", width=7)]
)
def test_rule110_answers(knobs):
    task = make_task("rule110", **knobs)
    n, w = task.num_states, task.width
    b = task.batch(5, 0, 24)
    for i in range(24):
        t = b.depth[i, n * w]
        assert np.all(b.group[i, n * w :] == 0)
        for s in range(n):
            cells = b.tokens[i, s * w : (s + 1) * w]
            assert set(cells) <= {0, 1}
            want = rule110_python(cells, t, task.boundary == "periodic")[0]
            assert b.tokens[i, n * w + s] == 2 + s
            assert b.targets[i, n * w + s] == want


@pytest.mark.parametrize("t", [0, 3])
def test_rule110_probe_asks_the_bit_its_query_token_names(t):
    task = make_task("rule110", num_states=3, width=9, t_values=(t,), probe_radius=2)
    n, w, r = 3, 9, 2
    assert task.vocab_size == 2 + n * (2 * r + 1)
    b = task.batch(1, 0, 64)
    asked = set()
    for i in range(64):
        for s in range(n):
            q = int(b.tokens[i, n * w + s]) - 2
            state, j = divmod(q, 2 * r + 1)
            j -= r
            assert state == s and -r <= j <= r
            asked.add(j)
            after = rule110_python(b.tokens[i, s * w : (s + 1) * w], t, True)
            assert b.targets[i, n * w + s] == after[j % w]
            assert task.token_names()[q + 2] == f"Q{s + 1}@{j:+d}"
    assert asked == set(range(-r, r + 1))
    assert "bit-" in task.describe(b, 0) or "bit+" in task.describe(b, 0)
    # Probing changes the queries only: the same seed draws the same states and t, and at
    # r = 0 the query tokens are Q1..Qn (2 + i), as before the knob existed.
    plain = make_task("rule110", num_states=3, width=9, t_values=(t,)).batch(1, 0, 64)
    np.testing.assert_array_equal(plain.tokens[:, : n * w], b.tokens[:, : n * w])
    np.testing.assert_array_equal(plain.depth, b.depth)
    np.testing.assert_array_equal(
        plain.tokens[:, n * w :], np.broadcast_to(2 + np.arange(n), (64, n))
    )
    with pytest.raises(ValueError, match="probe_radius"):
        make_task("rule110", width=8, probe_radius=4)


def _depo_check(task, b):
    nt, G, ql = task.name_tokens, task.graph_tokens, task.query_len
    for i in range(b.tokens.shape[0]):
        toks = b.tokens[i]
        graph = [int(x) for x in toks[:G]]
        while graph and graph[0] == depo_mod.PAD:
            graph.pop(0)
        assert len(graph) % (2 * nt) == 0 and depo_mod.PAD not in graph
        edges = [tuple(graph[j : j + 2 * nt]) for j in range(0, len(graph), 2 * nt)]
        succ = {e[:nt]: e[nt:] for e in edges}
        n = len(edges)
        assert task.n_min <= n <= task.max_nodes
        assert len(succ) == n and set(succ.values()) == set(succ)  # a permutation
        node, seen = edges[0][:nt], set()
        while node not in seen:
            seen.add(node)
            node = succ[node]
        assert len(seen) == n  # one single cycle
        for q in range(task.num_queries):
            s = G + q * ql
            k = int(toks[s]) - (task.alphabet + 1)
            assert 1 <= k <= task.max_hops
            node = tuple(int(x) for x in toks[s + 1 : s + 1 + nt])
            assert node in succ and toks[s + 1 + nt] == task.qmark
            for _ in range(k):
                node = succ[node]
            ans = slice(s + 1 + nt, s + 1 + 2 * nt)  # "?" and the first nt-1 answer tokens
            assert tuple(b.targets[i, ans]) == node
            assert tuple(toks[s + 2 + nt : s + 2 + 2 * nt]) == node  # teacher forcing
            assert np.all(b.loss_mask[i, ans] == 1) and np.all(b.depth[i, ans] == k)
            assert np.all(b.group[i, ans] == q)
            assert b.loss_mask[i, s : s + ql].sum() == nt


@pytest.mark.parametrize("idx", [i for i, (n, _) in enumerate(CONFIGS) if n == "depo"])
def test_depo_answers(idx):
    task = make_task("depo", **CONFIGS[idx][1])
    _depo_check(task, task.batch(2, 3, 24))
    _depo_check(task, task.eval_batch(2, 8))


def gsm_parse(task, toks):
    """Parses one rendered gsm problem; returns (query var, statements dict, order list)."""
    names = task.token_names()
    words = [names[x] for x in toks]
    while words[0] == "_":
        words.pop(0)
    assert len(toks) - len(words) <= 3  # at most 3 PAD tokens
    assert words[0] == "?" and words[2] == ";" and words[-1] == "ANS"
    query = words[1]
    body = words[3:-1]
    assert "_" not in body and "ANS" not in body and "?" not in body
    stmts, order, cur = {}, [], []
    for w in body:
        if w == ";":
            v = cur[0]
            assert cur[1] == "=" and v not in stmts  # assigned once
            assert len(cur) in (3, 5)
            stmts[v] = tuple(cur[2:])
            order.append(v)
            cur = []
        else:
            cur.append(w)
    assert cur == []
    return query, stmts, order


def gsm_eval(stmts, var, p, memo, visiting=()):
    if var in memo:
        return memo[var]
    assert var not in visiting, "cyclic definition"
    s = stmts[var]
    if len(s) == 1:
        v = int(s[0])
    else:
        x = gsm_eval(stmts, s[0], p, memo, visiting + (var,))
        y = gsm_eval(stmts, s[2], p, memo, visiting + (var,))
        v = {"+": x + y, "-": x - y, "*": x * y}[s[1]] % p
    memo[var] = v
    return v


def gsm_needed_ops(stmts, var, seen=None):
    seen = set() if seen is None else seen
    if var in seen:
        return 0
    seen.add(var)
    s = stmts[var]
    if len(s) == 1:
        return 0
    return 1 + gsm_needed_ops(stmts, s[0], seen) + gsm_needed_ops(stmts, s[2], seen)


@pytest.mark.parametrize("idx", [i for i, (n, _) in enumerate(CONFIGS) if n == "gsm"])
def test_gsm_answers(idx):
    task = make_task("gsm", **CONFIGS[idx][1])
    p = task.modulus
    b = task.batch(4, 1, 48)
    names = task.token_names()
    for i in range(48):
        query, stmts, order = gsm_parse(task, b.tokens[i])
        memo = {}
        for v in stmts:  # every statement is well defined (acyclic, no undefined operand)
            gsm_eval(stmts, v, p, memo)
        assert names[b.targets[i, -1]] == str(memo[query])
        assert b.loss_mask[i].sum() == 1 and b.loss_mask[i, -1] == 1
        assert gsm_needed_ops(stmts, query) == b.depth[i, -1]
        assert len(stmts) <= task.num_vars
        if task.order == "topological":
            pos = {v: j for j, v in enumerate(order)}
            for v, s in stmts.items():
                if len(s) == 3:
                    assert pos[s[0]] < pos[v] and pos[s[2]] < pos[v]


def test_recall_answers():
    for knobs in (CONFIGS[8][1], CONFIGS[9][1]):
        task = make_task("recall", **knobs)
        W = task.window
        b = task.batch(6, 0, 32)
        for i in range(32):
            first = [int(x) for x in b.tokens[i, :W]]
            n = b.depth[i, -1]
            assert first[: W - 2 * n] == [0] * (W - 2 * n)
            pairs = first[W - 2 * n :]
            keys, vals = pairs[0::2], pairs[1::2]
            assert all(1 <= k <= task.num_keys for k in keys) and len(set(keys)) == n
            assert all(task.num_keys < v < task.vocab_size for v in vals)
            table = dict(zip(keys, vals, strict=True))
            qs = np.nonzero(b.loss_mask[i])[0]
            assert len(qs) == task.num_queries
            for g, t in enumerate(qs):
                assert b.targets[i, t] == table[int(b.tokens[i, t])]
                assert b.group[i, t] == g


def test_describe(task):
    b = task.batch(0, 0, 2)
    s = task.describe(b, 1)
    assert isinstance(s, str) and task.name in s


# ---------------------------------------------------------------------------------------
# Metric
# ---------------------------------------------------------------------------------------


def perfect_logits(batch, vocab, scale=30.0):
    return (scale * np.eye(vocab)[batch.targets]).astype(np.float32)


def reference_metrics(logits, batch, depths):
    """Loop-based numpy reference of per_depth_metrics."""
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = lse - np.take_along_axis(logits, batch.targets[..., None], -1)[..., 0]
    pred = logits.argmax(-1)
    out = {}
    for d in [None, *depths]:
        tok = (batch.loss_mask > 0) & ((batch.depth == d) if d is not None else True)
        answers = []
        for i in range(batch.tokens.shape[0]):
            for g in set(batch.group[i][tok[i]]):
                sel = tok[i] & (batch.group[i] == g)
                answers.append(np.all(pred[i][sel] == batch.targets[i][sel]))
        sfx = "" if d is None else f"/d={d}"
        out["loss" + sfx] = nll[tok].mean() if tok.any() else math.nan
        out["acc" + sfx] = np.mean(answers) if answers else math.nan
    return out


def test_metric_perfect_and_single_error():
    task = make_task("depo")
    b = task.batch(0, 0, 8)
    logits = perfect_logits(b, task.vocab_size)
    m = per_depth_metrics(logits, b, task.depths)
    assert float(m["acc"]) == 1.0 and float(m["loss"]) < 1e-6
    # Break the *second* token of the answer of query 3 in example 5.
    pos = np.nonzero((b.group[5] == 3) & (b.loss_mask[5] > 0))[0]
    assert len(pos) == 2
    k = int(b.depth[5, pos[1]])
    wrong = (b.targets[5, pos[1]] + 1) % task.vocab_size
    logits[5, pos[1], wrong] = 60.0
    m = per_depth_metrics(logits, b, task.depths)
    n_k = int(((b.depth == k) & (b.loss_mask > 0)).sum() // 2)  # answers of depth k
    assert float(m["acc"]) == pytest.approx(1 - 1 / 80)
    assert float(m[f"acc/d={k}"]) == pytest.approx(1 - 1 / n_k)
    assert float(m[f"loss/d={k}"]) > 1.0

    # rule110: one wrong label of four makes the whole example wrong.
    task = make_task("rule110")
    b = task.batch(0, 0, 4)
    logits = perfect_logits(b, task.vocab_size)
    logits[2, 97, 1 - b.targets[2, 97]] = 60.0
    m = per_depth_metrics(logits, b, task.depths)
    assert float(m["acc"]) == 0.75 and float(m["acc/d=32"]) == 0.75


def test_metric_matches_reference_and_nan_buckets():
    task = make_task(
        "recall", num_pairs_values=(2, 4), num_keys=4, num_values=3, window=8, num_queries=4
    )
    b = task.batch(0, 0, 64)
    # Low-entropy random logits so that some answers are right and some wrong.
    logits = np.random.default_rng(0).normal(size=b.tokens.shape + (task.vocab_size,))
    logits = (logits + 2.0 * np.eye(task.vocab_size)[b.targets]).astype(np.float32)
    depths = (2, 4, 99)
    ref = reference_metrics(logits, b, depths)
    got = jax.jit(per_depth_metrics, static_argnames="depths")(logits, b, depths=depths)
    for key, v in ref.items():
        if math.isnan(v):
            assert math.isnan(float(got[key])), key
        else:
            assert float(got[key]) == pytest.approx(v, rel=1e-5, abs=1e-6), key
    assert 0 < float(got["acc"]) < 1
    # Sums over two halves give the full-batch metrics.
    s1 = per_depth_sums(logits[:20], b[:20], depths)
    s2 = per_depth_sums(logits[20:], b[20:], depths)
    summed = metrics_from_sums(jax.tree_util.tree_map(lambda x, y: x + y, s1, s2), depths)
    for key in ref:
        np.testing.assert_allclose(float(summed[key]), float(got[key]), rtol=1e-5)


def test_metric_multitoken_reference():
    task = make_task(
        "depo",
        max_nodes=5,
        min_nodes=3,
        name_tokens=2,
        alphabet=3,
        num_queries=3,
        max_hops=4,
        window=20,
        graph_tokens=20,
    )
    b = task.batch(1, 0, 64)
    logits = np.random.default_rng(1).normal(size=b.tokens.shape + (task.vocab_size,))
    logits = (logits + 2.5 * np.eye(task.vocab_size)[b.targets]).astype(np.float32)
    ref = reference_metrics(logits, b, task.depths)
    got = per_depth_metrics(logits, b, task.depths)
    for key, v in ref.items():
        assert float(got[key]) == pytest.approx(v, rel=1e-5, abs=1e-6), key
